using System.Diagnostics;
using Crest.Linux;
using Crest.TestKit;

namespace Crest.Bench;

/// <summary>
/// Registry mirrors for the critest rows, written by scripts/lib/critest-env.sh into one directory:
/// <c>crest.toml</c> (crestd's [registries] tables) and <c>containerd-hosts/</c> (containerd's hosts.toml files).
/// </summary>
internal sealed record Mirrors(string Dir)
{
    public string CrestToml => Path.Combine(Dir, "crest.toml");

    public string ContainerdHosts => Path.Combine(Dir, "containerd-hosts");
}

/// <summary>A CRI runtime under measurement: how to start it on fresh temporary roots (with registry mirrors, if given).</summary>
internal sealed record Subject(string Name, Func<TempDir, string, Mirrors?, (ProcessStartInfo Start, string Socket)> Prepare)
{
    /// <summary>Starts the subject; <paramref name="writeCni"/> writes its CNI conf dir (default: the tests' shared bridge).</summary>
    public async Task<RunningSubject> StartAsync(Mirrors? mirrors = null, Action<TempDir, string>? writeCni = null)
    {
        var dir = new TempDir("crest-bench");
        var cni = dir.CreateDirectory("cni");
        if (writeCni is null)
        {
            CniFixture.WriteBridgeConflist(cni);
        }
        else
        {
            writeCni(dir, cni);
        }

        var (start, socket) = Prepare(dir, cni, mirrors);
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

    public int Pid => process.Id;

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
    /// <summary>A path this project was built with (AssemblyMetadata in the csproj): crestd's and crest's build outputs.</summary>
    public static string BuiltPath(string key) => CrestBinaries.Resolve(typeof(Subjects).Assembly, key);

    public static IReadOnlyList<Subject> Create(string? crestdPath)
    {
        var containerd = ExecutableSearch.Resolve("containerd")
            ?? throw new InvalidOperationException("containerd is not installed; run make deps");
        return
        [
            Crest(crestdPath),
            // With mirrors, containerd pulls its pause image like any other (its default, registry.k8s.io/pause:3.10).
            new Subject("containerd", (dir, cni, mirrors) => mirrors is null
                ? ContainerdPeer.Prepare(containerd, dir, cni)
                : ContainerdPeer.Prepare(containerd, dir, cni, mirrors.ContainerdHosts, CritestScenario.PauseImage)),
        ];
    }

    /// <summary>crestd on its own temporary roots, restores through CreateContainer enabled.</summary>
    public static Subject Crest(string? crestdPath)
    {
        var crestd = crestdPath ?? BuiltPath("CrestdPath");
        return new Subject("crest", (dir, cni, mirrors) =>
            {
                var config = dir.Combine("config.toml");
                File.WriteAllText(config, $"[cni]\nconf_dir = \"{cni}\"\nplugin_dirs = [\"{CniFixture.HostPluginDir}\"]\n[log]\nlevel = \"warn\"\n[restore]\nvia_create = true\n");
                if (mirrors is not null)
                {
                    File.AppendAllText(config, File.ReadAllText(mirrors.CrestToml));
                }

                var start = new ProcessStartInfo(crestd) { UseShellExecute = false };
                foreach (var a in new[] { "--config", config, "--root", dir.Combine("root"), "--state", dir.Combine("state") })
                {
                    start.ArgumentList.Add(a);
                }

                return (start, dir.Combine("state", "crest.sock"));
            });
    }
}
