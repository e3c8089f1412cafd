using System.Diagnostics;
using Crest.Linux;
using Crest.TestKit;

namespace Crest.Bench;

/// <summary>A CRI runtime under measurement: how to start it on fresh temporary roots.</summary>
internal sealed record Subject(string Name, Func<TempDir, string, (ProcessStartInfo Start, string Socket)> Prepare)
{
    public async Task<RunningSubject> StartAsync()
    {
        var dir = new TempDir("crest-bench");
        var cni = dir.CreateDirectory("cni");
        CniFixture.WriteBridgeConflist(cni);
        var (start, socket) = Prepare(dir, cni);
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        var clock = Stopwatch.StartNew();
        var process = Process.Start(start)!;
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            await Scenarios.WaitReadyAsync(socket, TimeSpan.FromSeconds(60));
        }
        catch
        {
            process.Kill(entireProcessTree: true);
            dir.Dispose();
            throw;
        }

        return new RunningSubject(process, dir, socket, clock.Elapsed);
    }
}

internal sealed class RunningSubject(Process process, TempDir dir, string socket, TimeSpan startToReady) : IAsyncDisposable
{
    public string Socket => socket;

    /// <summary>The subject's temporary roots (crestd: root/ and state/).</summary>
    public TempDir Dir => dir;

    public TimeSpan StartToReady => startToReady;

    public long RssBytes()
    {
        var line = File.ReadLines($"/proc/{process.Id}/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
    }

    public async ValueTask DisposeAsync()
    {
        process.Kill(entireProcessTree: true);
        await process.WaitForExitAsync();
        process.Dispose();
        dir.Dispose();
    }
}

internal static class Subjects
{
    public static IReadOnlyList<Subject> Create(string? crestdPath)
    {
        var crestd = crestdPath ?? Path.GetFullPath(typeof(Subjects).Assembly
            .GetCustomAttributes(typeof(System.Reflection.AssemblyMetadataAttribute), false)
            .Cast<System.Reflection.AssemblyMetadataAttribute>().Single(a => a.Key == "CrestdPath").Value!);
        var containerd = ExecutableSearch.Resolve("containerd")
            ?? throw new InvalidOperationException("containerd is not installed; run make deps");
        return
        [
            new Subject("crest", (dir, cni) =>
            {
                var config = dir.Combine("config.toml");
                File.WriteAllText(config, $"[cni]\nconf_dir = \"{cni}\"\nplugin_dirs = [\"{CniFixture.HostPluginDir}\"]\n[log]\nlevel = \"warn\"\n[restore]\nvia_create = true\n");
                var start = new ProcessStartInfo(crestd) { UseShellExecute = false };
                foreach (var a in new[] { "--config", config, "--root", dir.Combine("root"), "--state", dir.Combine("state") })
                {
                    start.ArgumentList.Add(a);
                }

                return (start, dir.Combine("state", "crest.sock"));
            }),
            new Subject("containerd", (dir, cni) => ContainerdPeer.Prepare(containerd, dir, cni)),
        ];
    }
}
