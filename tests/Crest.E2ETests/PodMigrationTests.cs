using System.Text.Json;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;
using static Crest.E2ETests.MigrationTests;

namespace Crest.E2ETests;

/// <summary>
/// <c>crest migrate pod</c> between two crestd nodes on this machine (<see cref="TwoNodes"/>), with real runc, conmon,
/// CRIU and CNI: a pod of two counters moves whole, both count on from where they froze, the source pod is gone; a
/// migration the target cannot restore leaves the source pod running, and nothing on the target.
/// </summary>
[Collection(TwoNodes.Collection)]
public sealed partial class PodMigrationTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    internal static readonly string[] Counters = ["counter", "counter2"];

    /// <summary>A pod of two counters on node A (each in a pid namespace of its own, as the kubelet asks); its ID and the counters' logs once both counted a little.</summary>
    internal static Task<(string PodId, string[] Logs)> RunTwoCountersOnAAsync(TwoNodes nodes, string image) =>
        RunPodOnAAsync(nodes, "podmig", Counters, (config, name) => File.WriteAllTextAsync(config, $$"""
            {"metadata": {"name": "{{name}}"}, "image": {"image": "{{image}}"},
             "command": ["/bin/busybox", "sh", "-c", {{JsonSerializer.Serialize(CounterWorkload.Script)}}],
             "log_path": "{{name}}.log", "linux": {"security_context": {"namespace_options": {"pid": "CONTAINER"} } } }
            """, Ct));

    /// <summary>
    /// A pod <paramref name="podName"/> on node A with a container per name in <paramref name="names"/>, each made from the
    /// config <paramref name="writeConfig"/> writes (path, name) and logging NAME.log; its ID and the logs once each counted past 3.
    /// </summary>
    internal static async Task<(string PodId, string[] Logs)> RunPodOnAAsync(TwoNodes nodes, string podName, string[] names, Func<string, string, Task> writeConfig)
    {
        var pod = await WritePodAsync(nodes.A.Dir, podName, $"uid-{podName}-a");
        var podId = await nodes.A.Pods.RunAsync(pod);
        foreach (var name in names)
        {
            var config = nodes.A.Dir.Combine(name + ".json");
            await writeConfig(config, name);
            var id = await RunAsync([.. nodes.A.R, "create", podId, config, pod]);
            await RunAsync([.. nodes.A.R, "start", id]);
        }

        var logs = names.Select(n => nodes.A.Dir.Combine("logs-" + podName, n + ".log")).ToArray();
        foreach (var log in logs)
        {
            await CountPassesAsync(log, 3);
        }

        return (podId, logs);
    }

    internal static Task<(int ExitCode, string Stdout, string Stderr)> MigratePodAsync(TwoNodes nodes, string podId, string podConfig, params string[] more) =>
        Binaries.RunCrestAsync([.. nodes.A.R, "migrate", "pod", podId, "--to", nodes.B.Crestd.Endpoint, "--pod-config", podConfig, "-o", "json", .. more]);

    /// <summary>Each counter's log counts 1, 2, 3... with no gap or repeat (a restart from 0 would repeat).</summary>
    private static List<int> Counts(string log) =>
        CountLine().Matches(log).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();

    /// <remarks>With <paramref name="viaRegistry"/> the pod checkpoint goes through the shared registry as a pod checkpoint image (<c>--via</c>).</remarks>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_pod_of_two_counters_migrates_whole_and_both_count_on_from_where_they_froze(bool viaRegistry)
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("podmig");
        var image = await RegistryBusyboxOnAAsync(nodes);
        var (podId, logsA) = await RunTwoCountersOnAAsync(nodes, image);
        var podB = await WritePodAsync(nodes.B.Dir, "podmig", "uid-podmig-b");
        var via = $"{nodes.Registry.Host}/e2e/pods";

        var migrated = await MigratePodAsync(nodes, podId, podB, viaRegistry ? ["--via", via] : []);

        Assert.True(migrated.ExitCode == 0, $"migrate pod failed ({migrated.ExitCode}): {migrated.Stderr}\nA: {nodes.A.Crestd.Log}\nB: {nodes.B.Crestd.Log}");
        using var report = JsonDocument.Parse(migrated.Stdout);
        var r = report.RootElement;
        var podOnB = r.GetProperty("podSandboxId").GetString()!;
        var moved = r.GetProperty("containers").EnumerateArray().ToDictionary(c => c.GetProperty("name").GetString()!, c => c.GetProperty("containerId").GetString()!);
        Assert.Equal(Counters.Order(), moved.Keys.Order());
        Assert.True(r.GetProperty("bytesBeforeSwitch").GetInt64() > 0, "the base image was not pre-staged on B: " + migrated.Stdout);
        Assert.True(r.GetProperty("bytesDuringSwitch").GetInt64() > 0);
        var downtime = r.GetProperty("downtimeMs").GetInt64();
        Assert.InRange(downtime, 1, 60_000);

        // Exactly one copy: nothing left on A (no container, no pod), the pod and both counters running on B.
        Assert.Equal("", await RunAsync([.. nodes.A.R, "ps", "-a", "-q"]));
        Assert.Equal("", await RunAsync([.. nodes.A.R, "pods", "-q"]));
        Assert.Equal(podOnB, await RunAsync([.. nodes.B.R, "pods", "-q"]));
        foreach (var id in moved.Values)
        {
            Assert.Equal("CONTAINER_RUNNING", await StateAsync(nodes.B.R, id));
        }

        // Each counter went on from its last count on A: no count lost, none repeated, no restart from 0.
        for (var i = 0; i < Counters.Length; i++)
        {
            var lastOnA = LastCount(await File.ReadAllTextAsync(logsA[i], Ct));
            var logB = nodes.B.Dir.Combine("logs-podmig", Counters[i] + ".log");
            var counts = Counts(await CountPassesAsync(logB, lastOnA + 3, $"the migrated {Counters[i]} does not count on B: {nodes.B.Crestd.Log}"));
            Assert.Equal(Enumerable.Range(counts[0], counts.Count), counts);
            Assert.Contains(lastOnA + 1, counts);
        }

        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.A.Dir.Combine("root", "migrations")));
        // Through a registry nothing reaches the target's migrations directory, so it may not exist.
        Assert.False(Directory.Exists(nodes.B.Dir.Combine("root", "migrations")) && Directory.EnumerateFileSystemEntries(nodes.B.Dir.Combine("root", "migrations")).Any());
        if (viaRegistry)
        {
            // Restored from the pod checkpoint image the source pushed; neither node keeps a copy of it, the registry does.
            Assert.StartsWith($"{via}@sha256:", r.GetProperty("checkpointImage").GetString(), StringComparison.Ordinal);
            Assert.DoesNotContain("e2e/pods", await RunAsync([.. nodes.A.R, "images"]), StringComparison.Ordinal);
            Assert.DoesNotContain("e2e/pods", await RunAsync([.. nodes.B.R, "images"]), StringComparison.Ordinal);
            using var http = new HttpClient();
            using var tags = JsonDocument.Parse(await http.GetStringAsync(new Uri($"http://{nodes.Registry.Host}/v2/e2e/pods/tags/list"), Ct));
            Assert.Matches("^migration-[0-9a-f]{16}$", Assert.Single(tags.RootElement.GetProperty("tags").EnumerateArray()).GetString());
        }
        else
        {
            Assert.Equal(JsonValueKind.Null, r.GetProperty("checkpointImage").ValueKind);
        }

        TestContext.Current.TestOutputHelper?.WriteLine(
            $"pod of two counters{(viaRegistry ? " via the registry" : "")}: downtime {downtime} ms ({string.Join(", ", r.GetProperty("containers").EnumerateArray().Select(c => $"{c.GetProperty("name")} {c.GetProperty("downtimeMs")} ms"))}), "
            + $"frozen {r.GetProperty("frozenMs")} ms, {r.GetProperty("bytesDuringSwitch")} bytes during the switch, total {r.GetProperty("totalMs")} ms\n{migrated.Stderr}");
    }

    /// <summary>
    /// Each container's rootfs moves in rounds before the pod freeze: a writer that wrote 20 MiB of random bytes and keeps
    /// appending to a small file, beside a counter. The writer's first round carries the large file, the frozen window
    /// only the last lines; on the target the large file's checksum and every line are as on the source. The way back
    /// without rounds carries the large file in the frozen window, inside the writer's archive made as it streams.
    /// </summary>
    [Fact]
    public async Task Each_containers_rootfs_moves_in_rounds_before_the_pod_freeze_and_the_frozen_window_carries_only_the_last_changes()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("podmigfs");
        var image = await RegistryBusyboxOnAAsync(nodes);
        var pod = await WritePodAsync(nodes.A.Dir, "podmig", "uid-podmig-a");
        var podId = await nodes.A.Pods.RunAsync(pod);
        const string writer = "mkdir -p /data; /bin/busybox dd if=/dev/urandom of=/data/big bs=1048576 count=20 2>/dev/null; "
            + "echo \"big $(/bin/busybox sha256sum /data/big)\"; "
            + "i=0; while true; do i=$((i+1)); echo \"line $i\" >> /data/small; echo count $i; sleep 0.1; done";
        foreach (var (name, script) in new[] { ("writer", writer), ("counter", CounterWorkload.Script) })
        {
            var config = nodes.A.Dir.Combine(name + ".json");
            await File.WriteAllTextAsync(config, $$"""
                {"metadata": {"name": "{{name}}"}, "image": {"image": "{{image}}"},
                 "command": ["/bin/busybox", "sh", "-c", {{JsonSerializer.Serialize(script)}}],
                 "log_path": "{{name}}.log", "linux": {"security_context": {"namespace_options": {"pid": "CONTAINER"} } } }
                """, Ct);
            var id = await RunAsync([.. nodes.A.R, "create", podId, config, pod]);
            await RunAsync([.. nodes.A.R, "start", id]);
        }

        var writerLogA = nodes.A.Dir.Combine("logs-podmig", "writer.log");
        var started = await CountPassesAsync(writerLogA, 5);
        var bigSum = System.Text.RegularExpressions.Regex.Match(started, "big ([0-9a-f]{64})").Groups[1].Value;
        Assert.Equal(64, bigSum.Length);
        var podB = await WritePodAsync(nodes.B.Dir, "podmig", "uid-podmig-b");

        var migrated = await MigratePodAsync(nodes, podId, podB);

        Assert.True(migrated.ExitCode == 0, $"migrate pod failed ({migrated.ExitCode}): {migrated.Stderr}\nA: {nodes.A.Crestd.Log}\nB: {nodes.B.Crestd.Log}");
        using var report = JsonDocument.Parse(migrated.Stdout);
        var r = report.RootElement;
        var moved = r.GetProperty("containers").EnumerateArray().ToDictionary(c => c.GetProperty("name").GetString()!);
        var rounds = moved["writer"].GetProperty("rootfsRounds").EnumerateArray().ToList();
        Assert.NotEmpty(rounds);
        Assert.True(rounds[0].GetProperty("bytes").GetInt64() >= 20L << 20, "the writer's round 1 did not carry the 20 MiB file: " + migrated.Stdout);
        Assert.NotEmpty(moved["counter"].GetProperty("rootfsRounds").EnumerateArray());
        var frozenRootfs = r.GetProperty("frozenRootfsBytes").GetInt64();
        Assert.True(frozenRootfs < 1L << 20, $"the frozen window carried {frozenRootfs} rootfs bytes: " + migrated.Stderr);
        Assert.True(r.GetProperty("bytesBeforeSwitch").GetInt64() >= 20L << 20, "the rounds are not counted before the switch: " + migrated.Stdout);
        Assert.True(r.GetProperty("bytesDuringSwitch").GetInt64() < 20L << 20, "the pod checkpoint carried the large file again: " + migrated.Stdout);

        // On the target: the large file whole, every line of the small one, and the counter counting on.
        var writerB = moved["writer"].GetProperty("containerId").GetString()!;
        var lastOnA = LastCount(await File.ReadAllTextAsync(writerLogA, Ct));
        await CountPassesAsync(nodes.B.Dir.Combine("logs-podmig", "writer.log"), lastOnA + 2, "the migrated writer does not run on B: " + nodes.B.Crestd.Log);
        await CountPassesAsync(nodes.B.Dir.Combine("logs-podmig", "counter.log"), LastCount(await File.ReadAllTextAsync(nodes.A.Dir.Combine("logs-podmig", "counter.log"), Ct)) + 2,
            "the migrated counter does not run on B: " + nodes.B.Crestd.Log);
        Assert.StartsWith(bigSum, await RunAsync([.. nodes.B.R, "exec", "-s", writerB, "/bin/busybox", "sha256sum", "/data/big"]), StringComparison.Ordinal);
        var small = (await RunAsync([.. nodes.B.R, "exec", "-s", writerB, "/bin/busybox", "cat", "/data/small"])).Split('\n');
        Assert.True(small.Length > lastOnA, $"the small file on B has {small.Length} lines, the source wrote {lastOnA}");
        Assert.Equal(Enumerable.Range(1, small.Length).Select(i => $"line {i}"), small);
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.A.Dir.Combine("root", "migrations")));
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.B.Dir.Combine("root", "migrations")));

        // The way back without rounds, for comparison: the frozen window carries the large file.
        var podA = await WritePodAsync(nodes.A.Dir, "podmig", "uid-podmig-a2");
        var back = await Binaries.RunCrestAsync([.. nodes.B.R, "migrate", "pod", r.GetProperty("podSandboxId").GetString()!, "--to", nodes.A.Crestd.Endpoint, "--pod-config", podA,
            "--no-rootfs-rounds", "-o", "json"]);
        Assert.True(back.ExitCode == 0, $"migrate pod back failed ({back.ExitCode}): {back.Stderr}\nA: {nodes.A.Crestd.Log}\nB: {nodes.B.Crestd.Log}");
        using var backReport = JsonDocument.Parse(back.Stdout);
        var b = backReport.RootElement;
        Assert.All(b.GetProperty("containers").EnumerateArray(), c => Assert.Empty(c.GetProperty("rootfsRounds").EnumerateArray()));
        Assert.True(b.GetProperty("frozenRootfsBytes").GetInt64() >= 20L << 20, "without rounds the frozen window did not carry the large file: " + back.Stdout);
        var writerBack = b.GetProperty("containers").EnumerateArray().Single(c => c.GetProperty("name").GetString() == "writer").GetProperty("containerId").GetString()!;
        Assert.StartsWith(bigSum, await RunAsync([.. nodes.A.R, "exec", "-s", writerBack, "/bin/busybox", "sha256sum", "/data/big"]), StringComparison.Ordinal);
        TestContext.Current.TestOutputHelper?.WriteLine(
            $"pod rootfs rounds: writer {string.Join(", ", rounds.Select(x => $"{x.GetProperty("files")} files {x.GetProperty("bytes")} bytes"))}; frozen window rootfs {frozenRootfs} bytes, "
            + $"{r.GetProperty("bytesDuringSwitch")} bytes during the switch, frozen {r.GetProperty("frozenMs")} ms, downtime {r.GetProperty("downtimeMs")} ms\n"
            + $"without rounds: frozen window rootfs {b.GetProperty("frozenRootfsBytes")} bytes, {b.GetProperty("bytesDuringSwitch")} bytes during the switch, frozen {b.GetProperty("frozenMs")} ms, downtime {b.GetProperty("downtimeMs")} ms\n{migrated.Stderr}\n{back.Stderr}");
    }

    [Fact]
    public async Task A_pod_the_target_cannot_restore_runs_on_at_the_source_and_nothing_is_left_on_the_target()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("podmigf");
        // Imported on A only: no registry digest to pre-stage, and B's RestorePod cannot find the base image.
        await ImportBusyboxAsync(nodes.A.Dir, nodes.A.R);
        var (podId, logsA) = await RunTwoCountersOnAAsync(nodes, "localhost/e2e/busybox:v1");
        var podB = await WritePodAsync(nodes.B.Dir, "podmig", "uid-podmig-b");

        // Pre-copy is refused for a pod before anything happens.
        var preCopy = await MigratePodAsync(nodes, podId, podB, "--strategy", "pre-copy");
        Assert.Equal(1, preCopy.ExitCode);
        Assert.Contains("--strategy pre-copy is refused by", preCopy.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("freeze:", preCopy.Stderr, StringComparison.Ordinal);

        var migrated = await MigratePodAsync(nodes, podId, podB);

        Assert.True(migrated.ExitCode == 1, $"migrate pod was to fail ({migrated.ExitCode}): {migrated.Stderr}");
        Assert.Contains("freeze:", migrated.Stderr, StringComparison.Ordinal);
        Assert.Contains("undone: the pod runs on", migrated.Stderr, StringComparison.Ordinal);
        // Both source counters were resumed and count on, without a restart.
        Assert.Equal(podId, await RunAsync([.. nodes.A.R, "pods", "-q"]));
        foreach (var log in logsA)
        {
            var before = LastCount(await ReadLogAsync(log));
            var counts = Counts(await CountPassesAsync(log, before + 2, "a source counter did not resume after the failed migration"));
            Assert.Equal(Enumerable.Range(1, counts.Count), counts);
        }

        Assert.Equal("", await RunAsync([.. nodes.B.R, "pods", "-q"]));
        Assert.Equal("", await RunAsync([.. nodes.B.R, "ps", "-a", "-q"]));
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.B.Dir.Combine("root", "migrations")));
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.A.Dir.Combine("root", "migrations")));
    }
}
