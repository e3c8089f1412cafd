using System.Diagnostics;
using System.Text;

namespace Crest.E2ETests;

/// <summary>The built crestd and crest (Native AOT, or the JIT builds with CREST_JIT=1), run as separate processes exactly as an operator runs them.</summary>
internal static class Binaries
{
    public static string Crestd { get; } = global::Crest.TestKit.CrestBinaries.Resolve(typeof(Binaries).Assembly, "CrestdPath");

    public static string Crest { get; } = global::Crest.TestKit.CrestBinaries.Resolve(typeof(Binaries).Assembly, "CrestPath");

    /// <summary>Runs crest with <paramref name="args"/> and returns its exit code and output.</summary>
    public static async Task<(int ExitCode, string Stdout, string Stderr)> RunCrestAsync(IEnumerable<string> args, IDictionary<string, string>? env = null, string? stdin = null)
    {
        var start = new ProcessStartInfo(Crest)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = stdin is not null,
            UseShellExecute = false,
        };
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }

        // A test's endpoint must come from its own flags or env, never from the machine's environment.
        start.Environment.Remove("CONTAINER_RUNTIME_ENDPOINT");
        start.Environment.Remove("IMAGE_SERVICE_ENDPOINT");
        foreach (var (k, v) in env ?? new Dictionary<string, string>())
        {
            start.Environment[k] = v;
        }

        using var p = Process.Start(start)!;
        var stdout = p.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        var stderr = p.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        if (stdin is not null)
        {
            await p.StandardInput.WriteAsync(stdin);
            p.StandardInput.Close();
        }

        await p.WaitForExitAsync(TestContext.Current.CancellationToken);
        return (p.ExitCode, await stdout, await stderr);
    }
}

/// <summary>A crestd process on temporary roots; its log is kept for assertions and failure messages.</summary>
internal sealed class CrestdProcess : IAsyncDisposable
{
    private readonly StringBuilder _log = new();

    private CrestdProcess(Process process, string socket)
    {
        Process = process;
        Socket = socket;
    }

    public Process Process { get; }

    public string Socket { get; }

    public string Endpoint => "unix://" + Socket;

    public string Log
    {
        get
        {
            lock (_log)
            {
                return _log.ToString();
            }
        }
    }

    /// <summary>
    /// The log once it holds <paramref name="text"/>, or as it is after the bound: crestd's output reaches the test
    /// through a pipe, so a line logged before an RPC answered may still be on its way when the answer arrives.
    /// </summary>
    public Task<string> LoggedAsync(string text) =>
        Crest.TestKit.Eventually.LastAsync(() => Task.FromResult(Log), log => log.Contains(text, StringComparison.Ordinal));

    public static CrestdProcess Start(params string[] args) => Start(null, args);

    public static CrestdProcess Start(IDictionary<string, string>? environment, params string[] args) => StartIn(null, environment, args);

    /// <summary>Starts crestd with <paramref name="workingDirectory"/> as its working directory (null: the test's).</summary>
    public static CrestdProcess StartIn(string? workingDirectory, IDictionary<string, string>? environment, params string[] args) =>
        StartWith(Binaries.Crestd, [], workingDirectory, environment, args);

    /// <summary>
    /// Starts crestd in the network namespace <paramref name="netnsPath"/> (nsenter execs it, so the process is crestd's):
    /// the CNI bridge and the pods' routes are made there, as on a node of their own.
    /// </summary>
    public static CrestdProcess StartInNetns(string netnsPath, params string[] args) =>
        StartWith("nsenter", ["--net=" + netnsPath, "--", Binaries.Crestd], null, null, args);

    private static CrestdProcess StartWith(string program, string[] prefix, string? workingDirectory, IDictionary<string, string>? environment, string[] args)
    {
        var start = new ProcessStartInfo(program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? "",
        };
        foreach (var (k, v) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[k] = v;
        }

        foreach (var a in prefix.Concat(args))
        {
            start.ArgumentList.Add(a);
        }

        var socket = args.SkipWhile(a => a != "--socket").Skip(1).FirstOrDefault()
            ?? Path.Combine(args.SkipWhile(a => a != "--state").Skip(1).First(), "crest.sock");
        var p = new CrestdProcess(Process.Start(start)!, socket);
        p.Process.OutputDataReceived += (_, e) => p.Append(e.Data);
        p.Process.ErrorDataReceived += (_, e) => p.Append(e.Data);
        p.Process.BeginOutputReadLine();
        p.Process.BeginErrorReadLine();
        return p;
    }

    /// <summary>Starts crestd on the roots under <paramref name="dir"/> with its own CNI network and waits until it answers.</summary>
    public static async Task<CrestdProcess> StartReadyAsync(Crest.TestKit.TempDir dir, string extraConfig = "", IDictionary<string, string>? environment = null)
    {
        var config = WriteConfig(dir, extraConfig);
        var p = Start(environment, "--config", config, "--root", dir.Combine("root"), "--state", dir.Combine("state"));
        await Crest.TestKit.UnixGrpc.WaitForCriAsync(p.Socket, TimeSpan.FromSeconds(30), () => p.Log);
        return p;
    }

    public static string WriteConfig(Crest.TestKit.TempDir dir, string extraConfig = "")
    {
        var cni = dir.CreateDirectory("cni");
        Crest.TestKit.CniFixture.WriteBridgeConflist(cni);
        var config = dir.Combine("config.toml");
        File.WriteAllText(config, $"""
            [cni]
            conf_dir = "{cni}"
            plugin_dirs = ["{Crest.TestKit.CniFixture.HostPluginDir}"]
            {extraConfig}
            """);
        return config;
    }

    public async Task<int> StopAsync(int signal = 15)
    {
        _ = Kill(Process.Id, signal);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        await Process.WaitForExitAsync(cts.Token);
        return Process.ExitCode;
    }

    private bool _disposed;

    /// <summary>Kills crestd if it still runs; a second call (a test that restarted crestd and failed midway) does nothing.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        if (!Process.HasExited)
        {
            Process.Kill();
            await Process.WaitForExitAsync();
        }

        Process.Dispose();
    }

    private void Append(string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_log)
        {
            _log.AppendLine(line);
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);
}
