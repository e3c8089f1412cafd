using System.Diagnostics;
using System.Formats.Tar;
using System.Text;
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
            TestImages.BusyboxRootfs(t);
        }

        var pod = dir.Combine("pod.json");
        await File.WriteAllTextAsync(pod, $$"""
            {"metadata": {"name": "counter", "uid": "uid-counter", "namespace": "e2e", "attempt": 1},
             "hostname": "counter", "log_directory": "{{dir.CreateDirectory("logs")}}", "linux": {} }
            """, Ct);
        var counter = await CounterWorkload.WriteConfigAsync(dir, "localhost/e2e/busybox:v1", script: CounterWorkload.ScriptWith(period: "0.2"));
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
        var (pod, counter, quick) = await WriteConfigsAsync(dir);
        string[] r = ["-r", crestd.Endpoint];
        await using var owned = new OwnedPods(r);
        Assert.Equal(0, (await Binaries.RunCrestAsync([.. r, "image", "import", dir.Combine("rootfs.tar"), "localhost/e2e/busybox:v1"])).ExitCode);

        using var events = Process.Start(new ProcessStartInfo(Binaries.Crest, [.. r, "events"]) { RedirectStandardOutput = true, UseShellExecute = false })!;
        var eventLines = new StringBuilder();
        events.OutputDataReceived += (_, e) =>
        {
            lock (eventLines)
            {
                eventLines.Append(e.Data).Append(e.Data is null ? "" : "\n");
            }
        };
        events.BeginOutputReadLine();
        string Streamed()
        {
            lock (eventLines)
            {
                return eventLines.ToString();
            }
        }

        var runp = await Binaries.RunCrestAsync([.. r, "runp", pod]);
        var podId = runp.Stdout.Trim();

        // The stream is subscribed once it shows an event: a probe container's creation, removed again.
        var probe = await CheckpointSteps.RunAsync([.. r, "create", podId, quick, pod]);
        await Eventually.UntilAsync(() => Streamed().Contains($"ContainerCreatedEvent {probe[..13]}", StringComparison.Ordinal),
            "crest events to show the probe container's creation", ct: Ct);
        await CheckpointSteps.RunAsync([.. r, "rm", probe]);

        var create = await Binaries.RunCrestAsync([.. r, "create", podId, counter, pod]);
        var id = create.Stdout.Trim();
        var start = await Binaries.RunCrestAsync([.. r, "start", id]);
        var logFile = dir.Combine("logs", "counter.log");
        await CheckpointSteps.WaitForCountAsync(logFile, 3);
        var ps = await Binaries.RunCrestAsync([.. r, "ps"]);
        var pods = await Binaries.RunCrestAsync([.. r, "pods"]);
        var inspect = await Binaries.RunCrestAsync([.. r, "inspect", id]);
        var exec = await Binaries.RunCrestAsync([.. r, "exec", "-s", id, "/bin/sh", "-c", "echo inside; exit 5"]);
        var logsTail = await Binaries.RunCrestAsync([.. r, "logs", "--tail", "2", id]);
        var stats = await Binaries.RunCrestAsync([.. r, "stats"]);
        // The kubelet's rotation: move the file away, ask the runtime to reopen, new lines go to a new file.
        File.Move(logFile, logFile + ".1");
        using (var ch = UnixGrpc.Channel(crestd.Socket))
        {
            await new Runtime.V1.RuntimeService.RuntimeServiceClient(ch).ReopenContainerLogAsync(new Runtime.V1.ReopenContainerLogRequest { ContainerId = id }, cancellationToken: Ct);
        }

        var rotated = await Eventually.LastAsync(() => CheckpointSteps.ReadLogAsync(logFile), log => log.Contains("stdout F count", StringComparison.Ordinal), ct: Ct);
        var stop = await Binaries.RunCrestAsync([.. r, "stop", "-T", "2", id]);
        var rm = await Binaries.RunCrestAsync([.. r, "rm", id]);
        var stopp = await Binaries.RunCrestAsync([.. r, "stopp", podId]);
        var rmp = await Binaries.RunCrestAsync([.. r, "rmp", podId]);
        var after = await Binaries.RunCrestAsync([.. r, "pods", "-q"]);
        await Eventually.LastAsync(() => Task.FromResult(Streamed()), s => s.Contains($"ContainerDeletedEvent {id[..13]}", StringComparison.Ordinal), ct: Ct);
        events.Kill();
        await events.WaitForExitAsync(Ct);
        var streamed = Streamed();

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
            await CheckpointSteps.CountPassesAsync(dir.Combine("logs", "counter.log"), 0);
            await first.StopAsync(signal: 9);
        }

        // While no crestd runs, the counter keeps counting and the quick one exits 42 (its conmon, which names it, is gone).
        var log = dir.Combine("logs", "counter.log");
        var linesWhileDown = File.ReadAllLines(log).Length;
        await Eventually.UntilAsync(() => File.ReadAllLines(log).Length > linesWhileDown, "the container to go on logging while crestd is down", ct: Ct);
        await Eventually.UntilAsync(() => !AnyProcessMentions(quickId), $"the quick container {quickId} and its conmon to exit while crestd is down", ct: Ct);

        await using var second = await CrestdProcess.StartReadyAsync(dir);
        string[] r = ["-r", second.Endpoint];
        await using var owned = new OwnedPods(r);
        var ps = await Binaries.RunCrestAsync([.. r, "ps", "-a"]);
        var quickStatus = await Binaries.RunCrestAsync([.. r, "inspect", quickId]);
        var linesBefore = File.ReadAllLines(log).Length;
        await Eventually.UntilAsync(() => File.ReadAllLines(log).Length > linesBefore, "the counter to go on logging after the restart", ct: Ct);

        Assert.Matches($@"{counterId[..13]}\s+.*Running\s+counter", ps.Stdout);
        Assert.Matches($@"{quickId[..13]}\s+.*Exited\s+quick", ps.Stdout);
        using var doc = JsonDocument.Parse(quickStatus.Stdout);
        Assert.Equal(42, doc.RootElement.GetProperty("status").GetProperty("exitCode").GetInt32());
    }

    /// <summary>Whether any process's command line contains <paramref name="text"/> (a container ID names its conmon).</summary>
    private static bool AnyProcessMentions(string text) =>
        Directory.EnumerateDirectories("/proc").Where(d => int.TryParse(Path.GetFileName(d), out _)).Any(d =>
        {
            try
            {
                return File.ReadAllText(Path.Combine(d, "cmdline")).Contains(text, StringComparison.Ordinal);
            }
            catch (IOException)
            {
                return false;
            }
        });
}
