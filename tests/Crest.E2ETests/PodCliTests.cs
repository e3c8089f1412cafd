using System.Diagnostics;
using System.Formats.Tar;
using System.Text.Json;
using Crest.TestKit;

namespace Crest.E2ETests;

/// <summary>crictl's pod and container verbs with crictl's JSON config files, and crestd surviving kill -9.</summary>
public class PodCliTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<(string Pod, string Counter, string Quick)> WriteConfigsAsync(TempDir dir)
    {
        var rootfs = dir.Combine("rootfs.tar");
        await using (var f = File.Create(rootfs))
        await using (var t = new TarWriter(f, TarEntryFormat.Pax))
        {
            TestImages.Dir(t, "bin");
            TestImages.File(t, "bin/busybox", await File.ReadAllBytesAsync(TestImages.BusyboxStatic, Ct), mode: 0x1ED);
            TestImages.Symlink(t, "bin/sh", "busybox");
        }

        var pod = dir.Combine("pod.json");
        await File.WriteAllTextAsync(pod, $$"""
            {"metadata": {"name": "counter", "uid": "uid-counter", "namespace": "e2e", "attempt": 1},
             "hostname": "counter", "log_directory": "{{dir.CreateDirectory("logs")}}", "linux": {} }
            """, Ct);
        var counter = dir.Combine("counter.json");
        await File.WriteAllTextAsync(counter, """
            {"metadata": {"name": "counter"}, "image": {"image": "localhost/e2e/busybox:v1"},
             "command": ["/bin/busybox", "sh", "-c", "i=0; while true; do i=$((i+1)); echo count $i; sleep 0.2; done"],
             "log_path": "counter.log", "linux": {}}
            """, Ct);
        var quick = dir.Combine("quick.json");
        await File.WriteAllTextAsync(quick, """
            {"metadata": {"name": "quick"}, "image": {"image": "localhost/e2e/busybox:v1"},
             "command": ["/bin/busybox", "sh", "-c", "sleep 2; exit 42"], "log_path": "quick.log", "linux": {}}
            """, Ct);
        return (pod, counter, quick);
    }

    [Fact]
    public async Task A_pod_runs_stops_and_is_removed_with_the_crest_cli()
    {
        Requires.Root();
        Requires.Binary("conmon");
        using var dir = new TempDir("crest-e2e");
        await using var crestd = await CrestdProcess.StartReadyAsync(dir);
        var (pod, counter, _) = await WriteConfigsAsync(dir);
        string[] r = ["-r", crestd.Endpoint];
        Assert.Equal(0, (await Binaries.RunCrestAsync([.. r, "image", "import", dir.Combine("rootfs.tar"), "localhost/e2e/busybox:v1"])).ExitCode);

        using var events = Process.Start(new ProcessStartInfo(Binaries.Crest, [.. r, "events"]) { RedirectStandardOutput = true, UseShellExecute = false })!;
        var eventsOutput = events.StandardOutput.ReadToEndAsync(Ct);
        await Task.Delay(700, Ct);
        var runp = await Binaries.RunCrestAsync([.. r, "runp", pod]);
        var podId = runp.Stdout.Trim();
        var create = await Binaries.RunCrestAsync([.. r, "create", podId, counter, pod]);
        var id = create.Stdout.Trim();
        var start = await Binaries.RunCrestAsync([.. r, "start", id]);
        await Task.Delay(1000, Ct);
        var ps = await Binaries.RunCrestAsync([.. r, "ps"]);
        var pods = await Binaries.RunCrestAsync([.. r, "pods"]);
        var inspect = await Binaries.RunCrestAsync([.. r, "inspect", id]);
        var exec = await Binaries.RunCrestAsync([.. r, "exec", "-s", id, "/bin/sh", "-c", "echo inside; exit 5"]);
        var logsTail = await Binaries.RunCrestAsync([.. r, "logs", "--tail", "2", id]);
        var stats = await Binaries.RunCrestAsync([.. r, "stats"]);
        // The kubelet's rotation: move the file away, ask the runtime to reopen, new lines go to a new file.
        var logFile = dir.Combine("logs", "counter.log");
        File.Move(logFile, logFile + ".1");
        using (var ch = UnixGrpc.Channel(crestd.Socket))
        {
            await new Runtime.V1.RuntimeService.RuntimeServiceClient(ch).ReopenContainerLogAsync(new Runtime.V1.ReopenContainerLogRequest { ContainerId = id }, cancellationToken: Ct);
        }

        await Task.Delay(800, Ct);
        var rotated = File.Exists(logFile) ? await File.ReadAllTextAsync(logFile, Ct) : "";
        var stop = await Binaries.RunCrestAsync([.. r, "stop", "-T", "2", id]);
        var rm = await Binaries.RunCrestAsync([.. r, "rm", id]);
        var stopp = await Binaries.RunCrestAsync([.. r, "stopp", podId]);
        var rmp = await Binaries.RunCrestAsync([.. r, "rmp", podId]);
        var after = await Binaries.RunCrestAsync([.. r, "pods", "-q"]);
        await Task.Delay(300, Ct);
        events.Kill();
        var streamed = await eventsOutput;

        Assert.True(runp.ExitCode == 0, runp.Stderr);
        Assert.True(create.ExitCode == 0, create.Stderr);
        Assert.True(start.ExitCode == 0, start.Stderr);
        Assert.Matches($@"{id[..13]}\s+localhost/e2e/busybox:v1\s+.*Running\s+counter\s+0\s+{podId[..13]}", ps.Stdout);
        Assert.Matches($@"{podId[..13]}\s+.*Ready\s+counter\s+e2e\s+1\s+runc", pods.Stdout);
        using (var doc = JsonDocument.Parse(inspect.Stdout))
        {
            Assert.Equal("CONTAINER_RUNNING", doc.RootElement.GetProperty("status").GetProperty("state").GetString());
            Assert.True(doc.RootElement.GetProperty("info").GetProperty("pid").GetInt32() > 0);
        }

        Assert.Equal(5, exec.ExitCode);
        Assert.Matches(@"^count \d+\ncount \d+\n$", logsTail.Stdout);
        Assert.Matches($@"{id[..13]}\s+counter\s+\d+\.\d\d\s+[0-9.]+[kMG]?B\s+", stats.Stdout);
        Assert.Contains("stdout F count", rotated, StringComparison.Ordinal);
        Assert.Equal("inside\n", exec.Stdout);
        Assert.True(stop.ExitCode == 0 && rm.ExitCode == 0 && stopp.ExitCode == 0 && rmp.ExitCode == 0, stop.Stderr + rm.Stderr + stopp.Stderr + rmp.Stderr);
        Assert.Equal("", after.Stdout.Trim());
        Assert.Matches($@"ContainerCreatedEvent {id[..13]} pod=counter\n(.*\n)*.*ContainerStartedEvent {id[..13]}(.*\n)*.*ContainerStoppedEvent {id[..13]}(.*\n)*.*ContainerDeletedEvent {id[..13]}", streamed);
        Assert.Contains("stdout F count 3\n", await File.ReadAllTextAsync(dir.Combine("logs", "counter.log.1"), Ct), StringComparison.Ordinal);
    }

    [Fact]
    public async Task After_kill_9_crestd_finds_running_containers_still_running_and_exited_ones_with_their_exit_code()
    {
        Requires.Root();
        Requires.Binary("conmon");
        using var dir = new TempDir("crest-e2e");
        var (pod, counter, quick) = await WriteConfigsAsync(dir);
        string podId;
        string counterId;
        string quickId;
        await using (var first = await CrestdProcess.StartReadyAsync(dir))
        {
            string[] r1 = ["-r", first.Endpoint];
            await Binaries.RunCrestAsync([.. r1, "image", "import", dir.Combine("rootfs.tar"), "localhost/e2e/busybox:v1"]);
            podId = (await Binaries.RunCrestAsync([.. r1, "runp", pod])).Stdout.Trim();
            counterId = (await Binaries.RunCrestAsync([.. r1, "create", podId, counter, pod])).Stdout.Trim();
            quickId = (await Binaries.RunCrestAsync([.. r1, "create", podId, quick, pod])).Stdout.Trim();
            await Binaries.RunCrestAsync([.. r1, "start", counterId, quickId]);
            await Task.Delay(500, Ct);
            await first.StopAsync(signal: 9);
        }

        // While no crestd runs, the counter keeps counting and the quick one exits 42.
        var log = dir.Combine("logs", "counter.log");
        var linesWhileDown = File.ReadAllLines(log).Length;
        await Task.Delay(2500, Ct);
        Assert.True(File.ReadAllLines(log).Length > linesWhileDown, "the container stopped logging while crestd was down");

        await using var second = await CrestdProcess.StartReadyAsync(dir);
        string[] r = ["-r", second.Endpoint];
        var ps = await Binaries.RunCrestAsync([.. r, "ps", "-a"]);
        var quickStatus = await Binaries.RunCrestAsync([.. r, "inspect", quickId]);
        var linesBefore = File.ReadAllLines(log).Length;
        await Task.Delay(1000, Ct);
        var linesAfter = File.ReadAllLines(log).Length;
        await Binaries.RunCrestAsync([.. r, "rmp", podId]);

        Assert.Matches($@"{counterId[..13]}\s+.*Running\s+counter", ps.Stdout);
        Assert.Matches($@"{quickId[..13]}\s+.*Exited\s+quick", ps.Stdout);
        using var doc = JsonDocument.Parse(quickStatus.Stdout);
        Assert.Equal(42, doc.RootElement.GetProperty("status").GetProperty("exitCode").GetInt32());
        Assert.True(linesAfter > linesBefore, "the counter stopped logging after the restart");
    }
}
