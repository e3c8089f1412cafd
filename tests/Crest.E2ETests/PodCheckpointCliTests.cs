using System.Text.Json;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

/// <summary>
/// KEP-5823 through the CLI with real runc, conmon, CRIU and CNI: a pod of two busybox containers (a counter and an
/// idle sleep) checkpointed at one instant by <c>crest checkpoint pod</c> into one tar or a pod checkpoint image, the
/// pod removed, and <c>crest restore pod</c> bringing both back in a new pod, where the counter goes on from where it was.
/// </summary>
public partial class PodCheckpointCliTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A test's crestd, its pod and container configs, and the pods it owns (removed before crestd stops).</summary>
    private sealed record Setup(TempDir Dir, CrestdProcess Crestd, string[] R, string PodConfig, string CounterConfig, string SleeperConfig) : IAsyncDisposable
    {
        public OwnedPods Pods { get; } = new(R);

        public string CounterLog => Dir.Combine("logs-duo", "counter.log");

        public async ValueTask DisposeAsync()
        {
            try
            {
                await Pods.DisposeAsync();
            }
            finally
            {
                await Crestd.DisposeAsync();
            }
        }
    }

    private static async Task<Setup> StartAsync(TempDir dir)
    {
        Requires.Root();
        Requires.Binary("conmon");
        Requires.Binary("criu");
        Requires.Binary("runc");
        var crestd = await CrestdProcess.StartReadyAsync(dir);
        try
        {
            string[] r = ["-r", crestd.Endpoint];
            await ImportBusyboxAsync(dir, r);
            var pod = await WritePodAsync(dir, "duo", "uid-duo");
            // Private pid namespaces, as the kubelet asks for them.
            const string linux = "\"linux\": {\"security_context\": {\"namespace_options\": {\"pid\": \"CONTAINER\"}}}";
            var counter = dir.Combine("counter.json");
            await File.WriteAllTextAsync(counter, $$"""
                {"metadata": {"name": "counter"}, "image": {"image": "localhost/e2e/busybox:v1"},
                 "command": ["/bin/busybox", "sh", "-c", {{JsonSerializer.Serialize(CounterWorkload.Script)}}],
                 "log_path": "counter.log", {{linux}} }
                """, Ct);
            var sleeper = dir.Combine("sleeper.json");
            await File.WriteAllTextAsync(sleeper, $$"""
                {"metadata": {"name": "sleeper"}, "image": {"image": "localhost/e2e/busybox:v1"},
                 "command": ["/bin/busybox", "sleep", "3600"], "log_path": "sleeper.log", {{linux}} }
                """, Ct);
            return new Setup(dir, crestd, r, pod, counter, sleeper);
        }
        catch
        {
            await crestd.DisposeAsync();
            throw;
        }
    }

    /// <summary>Runs the pod with the counter and the sleeper; returns once the counter has counted a little.</summary>
    private static async Task<(string PodId, string Counter, string Sleeper)> RunPodAsync(Setup s)
    {
        var podId = await s.Pods.RunAsync(s.PodConfig);
        var counter = await RunAsync([.. s.R, "create", podId, s.CounterConfig, s.PodConfig]);
        await RunAsync([.. s.R, "start", counter]);
        var sleeper = await RunAsync([.. s.R, "create", podId, s.SleeperConfig, s.PodConfig]);
        await RunAsync([.. s.R, "start", sleeper]);
        await CountPassesAsync(s.CounterLog, 3);
        return (podId, counter, sleeper);
    }

    /// <summary>The counts a CRI log shows, with when each was written (to 100 ns).</summary>
    private static List<(DateTimeOffset At, int Count)> Counts(string log) =>
        [.. TimedCountLine().Matches(log).Select(m => (
            DateTimeOffset.ParseExact(m.Groups[1].Value + "." + m.Groups[2].Value.PadRight(7, '0')[..7] + "Z", "yyyy-MM-dd'T'HH:mm:ss.fffffffK", System.Globalization.CultureInfo.InvariantCulture),
            int.Parse(m.Groups[3].Value, System.Globalization.CultureInfo.InvariantCulture)))];

    [System.Text.RegularExpressions.GeneratedRegex(@"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d+)\+00:00 stdout F count (\d+)$", System.Text.RegularExpressions.RegexOptions.Multiline)]
    private static partial System.Text.RegularExpressions.Regex TimedCountLine();

    /// <summary>
    /// Both restored containers run, and the counter goes on from where the checkpoint caught it: what it writes after
    /// <paramref name="restoreStarted"/> begins above 1 and at most at <paramref name="lastBefore"/> + 1, and the log
    /// (the checkpoint brings the container's earlier log back) never counts backwards.
    /// </summary>
    private static async Task AssertRestoredAsync(Setup s, JsonElement restored, int lastBefore, DateTimeOffset restoreStarted)
    {
        var containers = restored.GetProperty("containers").EnumerateArray().ToDictionary(c => c.GetProperty("name").GetString()!, c => c.GetProperty("containerId").GetString()!);
        Assert.Equal(["counter", "sleeper"], containers.Keys.Order(StringComparer.Ordinal));
        foreach (var id in containers.Values)
        {
            Assert.Equal("CONTAINER_RUNNING", await StateAsync(s.R, id));
        }

        var log = await CountPassesAsync(s.CounterLog, lastBefore + 2, "the restored counter does not count: " + s.Crestd.Log);
        var counts = Counts(log);
        var afterRestore = counts.Where(c => c.At >= restoreStarted).Select(c => c.Count).ToList();
        Assert.NotEmpty(afterRestore);
        Assert.True(afterRestore[0] > 1 && afterRestore[0] <= lastBefore + 1,
            $"the restored counter began at {afterRestore[0]}, not from where it was checkpointed (at most {lastBefore}): {RestoreLog(s.Dir, containers["counter"])}");
        Assert.All(counts.Zip(counts.Skip(1)), pair => Assert.True(pair.Second.Count > pair.First.Count, $"the counter went from {pair.First.Count} back to {pair.Second.Count}"));
    }

    [Fact]
    public async Task A_pod_exported_to_one_tar_restores_into_a_new_pod_where_its_counter_continues()
    {
        using var dir = new TempDir("crest-e2e-podcp");
        await using var s = await StartAsync(dir);
        var (podId, _, _) = await RunPodAsync(s);
        var export = dir.Combine("duo.tar");

        var checkpointed = await Binaries.RunCrestAsync([.. s.R, "checkpoint", "pod", podId, "--export", export, "--stop", "-o", "json"]);

        Assert.True(checkpointed.ExitCode == 0, checkpointed.Stderr + s.Crestd.Log);
        using (var result = JsonDocument.Parse(checkpointed.Stdout))
        {
            Assert.Equal(export, result.RootElement.GetProperty("path").GetString());
            Assert.Equal(["counter", "sleeper"], result.RootElement.GetProperty("containers").EnumerateArray().Select(c => c.GetString()!).Order(StringComparer.Ordinal));
            Assert.Equal(new FileInfo(export).Length, result.RootElement.GetProperty("bytes").GetInt64());
        }

        Assert.Contains("Checkpointing pod", checkpointed.Stderr, StringComparison.Ordinal);
        // Only the tar is left beside it: the directory crestd wrote is gone.
        Assert.Equal([export], Directory.EnumerateFileSystemEntries(dir.Path, "duo.tar*").Concat(Directory.EnumerateFileSystemEntries(dir.Path, ".duo.tar*")));
        // --stop: the checkpointed pod's containers are no longer running, so the counter stood still at the checkpoint.
        var lastBefore = LastCount(await File.ReadAllTextAsync(s.CounterLog, Ct));

        using (var inspect = JsonDocument.Parse(await RunAsync([.. s.R, "checkpoint", "inspect", export, "-o", "json"])))
        {
            Assert.Equal("duo", inspect.RootElement.GetProperty("pod").GetString());
            Assert.Equal("stopped", inspect.RootElement.GetProperty("postCheckpointState").GetString());
            Assert.All(inspect.RootElement.GetProperty("containers").EnumerateArray(), c => Assert.True(c.GetProperty("archiveBytes").GetInt64() > 0));
        }

        await s.Pods.RemoveAsync(podId);
        File.Delete(s.CounterLog);

        // No --container: the configs recorded in the checkpoint's pod.json are sent.
        var restoreStarted = DateTimeOffset.UtcNow;
        using var restored = JsonDocument.Parse(await RunAsync([.. s.R, "restore", "pod", export, "--config", s.PodConfig, "--start", "-o", "json"]));

        Assert.NotEqual(podId, restored.RootElement.GetProperty("podSandboxId").GetString());
        await AssertRestoredAsync(s, restored.RootElement, lastBefore, restoreStarted);
        Assert.True(File.Exists(export), "RestorePod must not consume the exported tar");
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Combine("root", "restores")));
    }

    [Fact]
    public async Task A_pod_checkpoint_directory_restores_in_place_and_is_left_as_it_was()
    {
        using var dir = new TempDir("crest-e2e-poddir");
        await using var s = await StartAsync(dir);
        var (podId, _, _) = await RunPodAsync(s);
        var checkpoint = dir.Combine("duo-checkpoint");

        var written = await RunAsync([.. s.R, "checkpoint", "pod", podId, "--dir", Path.GetRelativePath(Environment.CurrentDirectory, checkpoint)]);

        Assert.Equal(checkpoint, written);
        var files = Directory.EnumerateFiles(checkpoint, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal).ToList();
        Assert.Contains(Path.Combine(checkpoint, "pod.json"), files);
        Assert.Contains(Path.Combine(checkpoint, "containers", "counter.tar"), files);
        var table = await RunAsync([.. s.R, "checkpoint", "inspect", checkpoint]);
        Assert.Contains("e2e/duo", table, StringComparison.Ordinal);
        Assert.Contains("sleeper", table, StringComparison.Ordinal);

        await s.Pods.RemoveAsync(podId);
        var lastBefore = LastCount(await File.ReadAllTextAsync(s.CounterLog, Ct));
        File.Delete(s.CounterLog);
        var restoreStarted = DateTimeOffset.UtcNow;
        using var restored = JsonDocument.Parse(await RunAsync([.. s.R, "restore", "pod", checkpoint, "--config", s.PodConfig, "--start", "-o", "json"]));

        await AssertRestoredAsync(s, restored.RootElement, lastBefore, restoreStarted);
        Assert.Equal(files, Directory.EnumerateFiles(checkpoint, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task A_pod_checkpoint_image_pushed_to_a_registry_and_pulled_back_restores_by_reference()
    {
        using var dir = new TempDir("crest-e2e-podimg");
        await using var s = await StartAsync(dir);
        Requires.Binary("docker-registry");
        await using var registry = await LocalRegistry.StartAsync();
        var image = $"{registry.Host}/e2e/duo-checkpoint:v1";
        var (podId, _, _) = await RunPodAsync(s);

        var checkpointed = await Binaries.RunCrestAsync([.. s.R, "checkpoint", "pod", podId, "--image", image, "--push"]);

        Assert.True(checkpointed.ExitCode == 0, checkpointed.Stderr + s.Crestd.Log);
        Assert.StartsWith(image + "@sha256:", checkpointed.Stdout.Trim(), StringComparison.Ordinal);
        // The pod keeps running (no --stop) and no temporary directory or tar is left behind.
        var atCheckpoint = LastCount(await File.ReadAllTextAsync(s.CounterLog, Ct));
        await CountPassesAsync(s.CounterLog, atCheckpoint, "the pod stopped counting after a checkpoint without --stop");
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.GetTempPath(), "crest-pod-checkpoint-*"));

        await s.Pods.RemoveAsync(podId);
        var lastBefore = LastCount(await File.ReadAllTextAsync(s.CounterLog, Ct));
        File.Delete(s.CounterLog);
        // The image restored is the one the registry serves, with its annotations.
        await RunAsync([.. s.R, "rmi", image]);
        await RunAsync([.. s.R, "pull", image]);

        // An image's pod.json is read by crestd only, so the container configs come from the caller.
        var noConfigs = await Binaries.RunCrestAsync([.. s.R, "restore", "pod", image, "--config", s.PodConfig]);
        Assert.Equal(2, noConfigs.ExitCode);
        var restoreStarted = DateTimeOffset.UtcNow;
        using var restored = JsonDocument.Parse(await RunAsync([.. s.R, "restore", "pod", image, "--config", s.PodConfig,
            "--container", s.CounterConfig, "--container", s.SleeperConfig, "--start", "-o", "json"]));

        await AssertRestoredAsync(s, restored.RootElement, lastBefore, restoreStarted);
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Combine("root", "restores")));
    }

    [Fact]
    public async Task A_pod_exported_on_one_node_restores_on_another_node_with_its_own_roots_and_network()
    {
        using var dir = new TempDir("crest-e2e-podnode");
        await using var s = await StartAsync(dir);
        var (podId, _, _) = await RunPodAsync(s);
        var export = dir.Combine("duo.tar");
        var podIp = await InspectPodIpAsync(s.R, podId);
        Assert.False(string.IsNullOrEmpty(podIp));
        await RunAsync([.. s.R, "checkpoint", "pod", podId, "--export", export, "--stop"]);
        var lastBefore = LastCount(await File.ReadAllTextAsync(s.CounterLog, Ct));

        // Node B: another crestd with its own roots, socket and streaming port, the same image imported.
        using var other = new TempDir("crest-e2e-podnode-b");
        await using var crestdB = await CrestdProcess.StartReadyAsync(other);
        string[] rB = ["-r", crestdB.Endpoint];
        await using var podsB = new OwnedPods(rB);
        await ImportBusyboxAsync(other, rB);
        var podConfigB = await WritePodAsync(other, "duo", "uid-duo");
        var restoreStarted = DateTimeOffset.UtcNow;
        using var restored = JsonDocument.Parse(await RunAsync([.. rB, "restore", "pod", export, "--config", podConfigB, "--start", "-o", "json"]));
        var podB = restored.RootElement.GetProperty("podSandboxId").GetString()!;

        var logB = other.Combine("logs-duo", "counter.log");
        var log = await CountPassesAsync(logB, lastBefore + 2, "the counter restored on node B does not count: " + crestdB.Log);
        var afterRestore = Counts(log).Where(c => c.At >= restoreStarted).Select(c => c.Count).ToList();
        Assert.True(afterRestore.Count > 0 && afterRestore[0] > 1 && afterRestore[0] <= lastBefore + 1, $"node B's counter began at {afterRestore.FirstOrDefault()}, checkpointed at {lastBefore}");
        Assert.Equal(podB, await RunAsync([.. rB, "pods", "-q"]));
        // The restored pod has an address of its own from CNI (host-local hands out the next free one, not the one node A released).
        var ipB = await InspectPodIpAsync(rB, podB);
        Assert.False(string.IsNullOrEmpty(ipB));
        Assert.NotEqual(podIp, ipB);
    }

    [Fact]
    public async Task A_container_of_a_restored_pod_keeps_running_when_it_is_checkpointed_again()
    {
        // RestorePod leaves each of several containers stopped by CRIU until the last is back; that choice belongs to
        // the restore alone, not to the container's later checkpoints (which leave it running).
        using var dir = new TempDir("crest-e2e-podagain");
        await using var s = await StartAsync(dir);
        var (podId, _, _) = await RunPodAsync(s);
        var export = dir.Combine("duo.tar");
        await RunAsync([.. s.R, "checkpoint", "pod", podId, "--export", export, "--stop"]);
        await s.Pods.RemoveAsync(podId);
        using var restored = JsonDocument.Parse(await RunAsync([.. s.R, "restore", "pod", export, "--config", s.PodConfig, "--start", "-o", "json"]));
        var newPod = restored.RootElement.GetProperty("podSandboxId").GetString()!;
        var counter = restored.RootElement.GetProperty("containers").EnumerateArray().Single(c => c.GetProperty("name").GetString() == "counter").GetProperty("containerId").GetString()!;
        await CountPassesAsync(s.CounterLog, LastCount(await ReadLogAsync(s.CounterLog)), "the restored counter does not count: " + s.Crestd.Log);

        await RunAsync([.. s.R, "checkpoint", "--export", dir.Combine("counter-again.tar"), counter]);

        await AssertStillCountingAsync(s, counter, "CheckpointContainer");

        await RunAsync([.. s.R, "checkpoint", "pod", newPod, "--export", dir.Combine("duo-again.tar")]);

        await AssertStillCountingAsync(s, counter, "CheckpointPod");
    }

    /// <summary>The container's process is not stopped (state T) and its counter goes on after the checkpoint.</summary>
    private static async Task AssertStillCountingAsync(Setup s, string id, string after)
    {
        var pid = (await InspectAsync(s.R, id)).GetProperty("info").GetProperty("pid").GetInt32();
        var state = File.ReadLines($"/proc/{pid}/status").Single(l => l.StartsWith("State:", StringComparison.Ordinal));
        Assert.DoesNotContain("T (stopped)", state, StringComparison.Ordinal);
        var atCheckpoint = LastCount(await ReadLogAsync(s.CounterLog));
        await CountPassesAsync(s.CounterLog, atCheckpoint + 2, $"after {after} the restored counter stands still ({state.Trim()}): " + s.Crestd.Log);
    }

    private static async Task<string?> InspectPodIpAsync(string[] r, string podId)
    {
        using var doc = JsonDocument.Parse(await RunAsync([.. r, "inspectp", podId]));
        return doc.RootElement.GetProperty("status").TryGetProperty("network", out var net) && net.TryGetProperty("ip", out var ip) ? ip.GetString() : null;
    }
}
