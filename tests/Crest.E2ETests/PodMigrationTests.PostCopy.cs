using System.Text.Json;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;
using static Crest.E2ETests.MigrationTests;

namespace Crest.E2ETests;

// A whole pod, post-copy: each container's memory comes from a page server of its own on the source after the switch.
public sealed partial class PodMigrationTests
{
    private static readonly string[] MemoryWorkloads = ["memory", "memory2"];

    /// <summary>
    /// A pod of two awk workloads holding 48 MiB each moves post-copy: the pod checkpoint carries none of that memory,
    /// each restored container faults its own in from its own page server on A (over TLS), every line on B still sees
    /// its whole string, and nothing is left on A, not even a key pair.
    /// </summary>
    [Fact]
    public async Task A_pod_migrates_post_copy_with_each_containers_memory_from_its_own_page_server_and_arrives_whole()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("podpost");
        await RequirePostCopyAsync(nodes);
        var image = await RegistryBusyboxOnAAsync(nodes);
        const long bytes = 48L << 20;
        var pod = await WritePodAsync(nodes.A.Dir, "podpost", "uid-podpost-a");
        var podId = await nodes.A.Pods.RunAsync(pod);
        foreach (var name in MemoryWorkloads)
        {
            var config = nodes.A.Dir.Combine(name + ".json");
            var script = $"BEGIN{{tag=\"{MemoryWorkloadTag(nodes)}\"; s=sprintf(\"%{bytes}s\",\"\"); while(1){{i++; print \"count \" i \" len \" length(s) \" mid \" (substr(s,{bytes / 2},4) == \"    \" ? \"ok\" : \"lost\"); fflush(); system(\"exec /bin/busybox sleep 0.1\")}}}}";
            await File.WriteAllTextAsync(config, $$"""
                {"metadata": {"name": "{{name}}"}, "image": {"image": "{{image}}"},
                 "command": ["/bin/busybox", "awk", {{JsonSerializer.Serialize(script)}}], "log_path": "{{name}}.log",
                 "linux": {"security_context": {"namespace_options": {"pid": "CONTAINER"} } } }
                """, Ct);
            var id = await RunAsync([.. nodes.A.R, "create", podId, config, pod]);
            await RunAsync([.. nodes.A.R, "start", id]);
        }

        var logsA = MemoryWorkloads.Select(n => nodes.A.Dir.Combine("logs-podpost", n + ".log")).ToArray();
        foreach (var log in logsA)
        {
            await CountPassesAsync(log, 3);
        }

        var podB = await WritePodAsync(nodes.B.Dir, "podpost", "uid-podpost-b");

        var migrated = await MigratePodAsync(nodes, podId, podB, "--strategy", "post-copy");

        Assert.True(migrated.ExitCode == 0, $"migrate pod post-copy failed ({migrated.ExitCode}): {migrated.Stderr}\nA: {nodes.A.Crestd.Log}\nB: {nodes.B.Crestd.Log}");
        using var report = JsonDocument.Parse(migrated.Stdout);
        var r = report.RootElement;
        Assert.Equal("post-copy", r.GetProperty("strategy").GetString());
        // The memory moved after the switch, not in it: the checkpoint is smaller than one workload's string.
        Assert.True(r.GetProperty("bytesDuringSwitch").GetInt64() < bytes, $"the pod checkpoint carried {r.GetProperty("bytesDuringSwitch")} bytes");
        Assert.True(r.GetProperty("bytesAfterSwitch").GetInt64() > 2 * bytes, $"only {r.GetProperty("bytesAfterSwitch")} bytes arrived after the switch");
        Assert.Contains("over TLS", migrated.Stderr, StringComparison.Ordinal);
        var moved = r.GetProperty("containers").EnumerateArray().ToDictionary(c => c.GetProperty("name").GetString()!, c => c.GetProperty("containerId").GetString()!);

        Assert.Equal("", await RunAsync([.. nodes.A.R, "ps", "-a", "-q"]));
        Assert.Equal("", await RunAsync([.. nodes.A.R, "pods", "-q"]));
        for (var i = 0; i < MemoryWorkloads.Length; i++)
        {
            Assert.Equal("CONTAINER_RUNNING", await StateAsync(nodes.B.R, moved[MemoryWorkloads[i]]));
            var lastOnA = LastCount(await File.ReadAllTextAsync(logsA[i], Ct));
            var logB = nodes.B.Dir.Combine("logs-podpost", MemoryWorkloads[i] + ".log");
            var log = await Eventually.UntilAsync(() => ReadLogAsync(logB), l => l.Contains($"count {lastOnA + 3} ", StringComparison.Ordinal),
                $"the migrated {MemoryWorkloads[i]} to count on", describe: l => l[^Math.Min(400, l.Length)..], ct: Ct);
            // Every line after the switch still reads its whole string: each page arrived, from its own container's source.
            var after = log.Split('\n').SkipWhile(l => !l.Contains($"count {lastOnA + 1} ", StringComparison.Ordinal)).Where(l => l.Contains("count", StringComparison.Ordinal)).ToList();
            Assert.NotEmpty(after);
            Assert.All(after, l => Assert.EndsWith($" len {bytes} mid ok", l, StringComparison.Ordinal));
        }

        // Two copies of the workload on this machine, both B's (one per container), and no key pair left on either node.
        Assert.Equal(2, ProcessesWith("busybox", "awk", MemoryWorkloadTag(nodes)).Count);
        Assert.Empty(PageTransferKeys(nodes.A));
        await Eventually.UntilAsync(() => !PageTransferKeys(nodes.B).Any(), "B's page client key pairs to go with their transfers", ct: Ct);
        TestContext.Current.TestOutputHelper?.WriteLine(
            $"pod post-copy, 2 x {bytes >> 20} MiB: downtime {r.GetProperty("downtimeMs")} ms, frozen {r.GetProperty("frozenMs")} ms, page transfer {r.GetProperty("pageTransferMs")} ms, "
            + $"{r.GetProperty("bytesDuringSwitch")} bytes during the switch, {r.GetProperty("bytesAfterSwitch")} after\n{migrated.Stderr}");
    }
}
