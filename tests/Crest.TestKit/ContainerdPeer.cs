using System.Diagnostics;

namespace Crest.TestKit;

/// <summary>
/// containerd 2.1 (Debian forky) started in its own temporary root, state and socket: the CRI peer that
/// tests and benchmarks compare Crest with. Never touches a host install.
/// </summary>
public sealed class ContainerdPeer : IAsyncDisposable
{
    private readonly Process _process;
    private readonly TempDir _dir;

    private ContainerdPeer(Process process, TempDir dir, string socket)
    {
        _process = process;
        _dir = dir;
        Socket = socket;
    }

    public string Socket { get; }

    public string Endpoint => "unix://" + Socket;

    public int Pid => _process.Id;

    public string LogFile => _dir.Combine("containerd.log");

    /// <summary>
    /// Writes a containerd config rooted in <paramref name="dir"/> and returns how to start it and where it will listen.
    /// <paramref name="registryConfigPath"/> is a directory of hosts.toml files (containerd's registry mirrors), if any;
    /// <paramref name="sandboxImage"/> is the pinned pause image (by default the one the benchmarks import offline).
    /// </summary>
    public static (ProcessStartInfo Start, string Socket) Prepare(
        string containerdPath, TempDir dir, string cniConfDir, string? registryConfigPath = null, string sandboxImage = "localhost/crest-bench/pause:v1")
    {
        ArgumentNullException.ThrowIfNull(dir);
        var socket = dir.Combine("c.sock");
        var config = dir.Combine("config.toml");
        var registry = registryConfigPath is null ? "" : $"""

            [plugins."io.containerd.cri.v1.images".registry]
              config_path = "{registryConfigPath}"
            """;
        // Roots, state and socket of its own; CNI from the test's conf dir; no CDI so annotations pass unprocessed.
        File.WriteAllText(config, $"""
            version = 3
            root = "{dir.Combine("root")}"
            state = "{dir.Combine("state")}"
            [grpc]
              address = "{socket}"
            [plugins."io.containerd.nri.v1.nri"]
              disable = true
            [plugins."io.containerd.cri.v1.images".pinned_images]
              sandbox = "{sandboxImage}"{registry}
            [plugins."io.containerd.cri.v1.runtime"]
              enable_cdi = false
              restrict_oom_score_adj = true
            [plugins."io.containerd.cri.v1.runtime".cni]
              conf_dir = "{cniConfDir}"
              bin_dirs = ["{CniFixture.HostPluginDir}"]
            [plugins."io.containerd.cri.v1.runtime".containerd]
              default_runtime_name = "runc"
            """);
        var start = new ProcessStartInfo(containerdPath)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add("--config");
        start.ArgumentList.Add(config);
        return (start, socket);
    }

    public static async Task<ContainerdPeer> StartAsync(string containerdPath, string cniConfDir, TimeSpan timeout)
    {
        var dir = new TempDir("crest-ctrd");
        var (start, socket) = Prepare(containerdPath, dir, cniConfDir);
        var process = Process.Start(start)!;
        var log = File.CreateText(dir.Combine("containerd.log"));
        log.AutoFlush = true;
        var gate = new object();
        process.OutputDataReceived += (_, e) => { lock (gate) { log.WriteLine(e.Data); } };
        process.ErrorDataReceived += (_, e) => { lock (gate) { log.WriteLine(e.Data); } };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        var peer = new ContainerdPeer(process, dir, socket);
        try
        {
            await UnixGrpc.WaitForCriAsync(socket, timeout, () => ReadTail(peer.LogFile));
        }
        catch
        {
            await peer.DisposeAsync();
            throw;
        }

        return peer;
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }

        _process.Dispose();
        _dir.Dispose();
    }

    private static string ReadTail(string path)
    {
        try
        {
            using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            using var r = new StreamReader(f);
            var lines = r.ReadToEnd().Split('\n');
            return string.Join('\n', lines.TakeLast(20));
        }
        catch (IOException)
        {
            return "";
        }
    }
}
