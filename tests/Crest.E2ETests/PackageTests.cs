using System.Diagnostics;
using System.Formats.Tar;
using System.Net.Sockets;
using System.Text;
using Crest.TestKit;

namespace Crest.E2ETests;

/// <summary>
/// The Debian package as an operator meets it: `make deb`, `dpkg -i`, the unit systemd would run, crestd from
/// /usr/bin on the packaged defaults (roots moved by flags) through a pod and a checkpoint with readiness signalled
/// over NOTIFY_SOCKET, then `dpkg -P` leaving the node as it was.
/// </summary>
public class PackageTests
{
    private const string Package = "crest";

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task The_package_installs_serves_a_pod_and_a_checkpoint_and_purges_without_a_trace()
    {
        Requires.Root();
        Requires.Binary("dpkg-deb");
        Requires.Binary("criu");
        var (installed, _) = await ToolAsync("dpkg-query", "-W", "-f=${Status}", Package);
        Assert.SkipWhen(installed == 0 && File.Exists("/usr/bin/crestd"), "the crest package is installed on this machine; the test would remove it");
        Assert.SkipWhen(Directory.Exists("/var/lib/crest"), "/var/lib/crest exists on this machine; purging the package would remove it");
        using var dir = new TempDir("crest-e2e-deb");
        var repo = RepositoryRoot();

        var (built, buildOutput) = await ToolAsync(Path.Combine(repo, "scripts", "deb.sh"), dir.CreateDirectory("out"));
        Assert.True(built == 0, buildOutput);
        var deb = buildOutput.Split('\n').Select(l => l.Trim()).First(l => l.EndsWith(".deb", StringComparison.Ordinal) && File.Exists(l));
        var (install, installOutput) = await ToolAsync("dpkg", "-i", deb);
        try
        {
            Assert.True(install == 0, installOutput);
            Assert.Equal("/usr/lib/crest/crestd", Path.GetFullPath(new FileInfo("/usr/bin/crestd").ResolveLinkTarget(true)!.FullName));
            Assert.Equal((UnixFileMode)0x1C9 /* 0711 */, File.GetUnixFileMode("/var/lib/crest"));
            Assert.Contains("# [checkpoint]", await File.ReadAllTextAsync("/etc/crest/config.toml", Ct), StringComparison.Ordinal);
            var (verify, verifyOutput) = await ToolAsync("systemd-analyze", "verify", "/lib/systemd/system/crestd.service");
            Assert.True(verify == 0, verifyOutput);
            var unit = await File.ReadAllTextAsync("/lib/systemd/system/crestd.service", Ct);
            foreach (var line in new[] { "Type=notify", "Delegate=yes", "KillMode=process", "Restart=always", "OOMScoreAdjust=-999" })
            {
                Assert.Contains(line + "\n", unit, StringComparison.Ordinal);
            }

            await RunPackagedCrestdAsync(dir);
        }
        finally
        {
            var (purge, purgeOutput) = await ToolAsync("dpkg", "-P", Package);
            Assert.True(purge == 0, purgeOutput);
        }

        foreach (var path in new[] { "/usr/bin/crestd", "/usr/bin/crest", "/usr/lib/crest", "/etc/crest", "/var/lib/crest", "/lib/systemd/system/crestd.service" })
        {
            Assert.False(File.Exists(path) || Directory.Exists(path), $"{path} is still there after dpkg -P");
        }
    }

    /// <summary>crestd from /usr/bin with the packaged config, told where systemd listens; one pod, one container, one checkpoint.</summary>
    private static async Task RunPackagedCrestdAsync(TempDir dir)
    {
        var notifyPath = dir.Combine("notify.sock");
        using var notify = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        notify.Bind(new UnixDomainSocketEndPoint(notifyPath));
        var state = dir.Combine("state");
        var start = new ProcessStartInfo("/usr/bin/crestd") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--root", dir.Combine("root"), "--state", state })
        {
            start.ArgumentList.Add(a);
        }

        start.Environment["NOTIFY_SOCKET"] = notifyPath;
        using var crestd = Process.Start(start)!;
        var log = new StringBuilder();
        crestd.OutputDataReceived += (_, e) => { lock (log) { log.AppendLine(e.Data); } };
        crestd.ErrorDataReceived += (_, e) => { lock (log) { log.AppendLine(e.Data); } };
        crestd.BeginOutputReadLine();
        crestd.BeginErrorReadLine();
        string[] r = ["-r", "unix://" + Path.Combine(state, "crest.sock")];
        try
        {
            var ready = await ReceiveAsync(notify, () => log.ToString());
            // Ready means serving: the CRI socket answers at once.
            var (version, versionOutput) = await CrestAsync([.. r, "version"]);

            var rootfs = dir.Combine("rootfs.tar");
            await using (var f = File.Create(rootfs))
            await using (var t = new TarWriter(f, TarEntryFormat.Pax))
            {
                TestImages.BusyboxRootfs(t);
            }

            await MustAsync([.. r, "image", "import", rootfs, "localhost/e2e/busybox:v1"]);
            var pod = await CheckpointSteps.WritePodAsync(dir, "packaged", "uid-packaged");
            var container = dir.Combine("sleeper.json");
            await File.WriteAllTextAsync(container, """
                {"metadata": {"name": "sleeper"}, "image": {"image": "localhost/e2e/busybox:v1"},
                 "command": ["/bin/busybox", "sleep", "600"], "log_path": "sleeper.log", "linux": {} }
                """, Ct);
            var podId = await MustAsync([.. r, "runp", pod]);
            try
            {
                var id = await MustAsync([.. r, "create", podId, container, pod]);
                await MustAsync([.. r, "start", id]);
                var archive = dir.Combine("sleeper.tar");
                await MustAsync([.. r, "checkpoint", "--export", archive, id]);

                Assert.StartsWith("READY=1\n", ready, StringComparison.Ordinal);
                Assert.Contains($"MAINPID={crestd.Id}", ready, StringComparison.Ordinal);
                Assert.True(version == 0, versionOutput);
                Assert.True(new FileInfo(archive).Length > 0, "the checkpoint archive is empty");
            }
            finally
            {
                await CrestAsync([.. r, "rmp", podId]);
            }

            _ = Kill(crestd.Id, 15);
            var stopping = await ReceiveAsync(notify, () => log.ToString());
            using var exit = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            await crestd.WaitForExitAsync(exit.Token);

            Assert.Equal("STOPPING=1", stopping);
            Assert.Equal(0, crestd.ExitCode);
        }
        finally
        {
            if (!crestd.HasExited)
            {
                crestd.Kill();
                await crestd.WaitForExitAsync(CancellationToken.None);
            }
        }
    }

    private static async Task<string> ReceiveAsync(Socket socket, Func<string> log)
    {
        var buffer = new byte[4096];
        using var bound = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        bound.CancelAfter(TimeSpan.FromSeconds(60));
        try
        {
            var n = await socket.ReceiveAsync(buffer, SocketFlags.None, bound.Token);
            return Encoding.UTF8.GetString(buffer, 0, n);
        }
        catch (OperationCanceledException) when (!Ct.IsCancellationRequested)
        {
            Assert.Fail("crestd sent no notification within 60 s:\n" + log());
            throw;
        }
    }

    private static async Task<string> MustAsync(string[] args)
    {
        var (code, output) = await CrestAsync(args);
        Assert.True(code == 0, $"crest {string.Join(' ', args)} failed ({code}): {output}");
        return output.Trim();
    }

    private static Task<(int ExitCode, string Output)> CrestAsync(string[] args) => ToolAsync("/usr/bin/crest", args);

    private static Task<(int ExitCode, string Output)> ToolAsync(string program, params string[] args) => CheckpointSteps.Tool(program, args);

    private static string RepositoryRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "Crest.slnx")))
            {
                return d.FullName;
            }
        }

        throw new InvalidOperationException($"no Crest.slnx above {AppContext.BaseDirectory}");
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);
}
