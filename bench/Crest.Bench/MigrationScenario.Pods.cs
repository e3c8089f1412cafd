using System.Text.Json;

namespace Crest.Bench;

// Whole-pod rows: `crest migrate pod` of a pod of two memory-dirtier containers, stop-copy against post-copy.
internal static partial class MigrationScenario
{
    /// <summary>Each container's memory in the pod rows.</summary>
    private const int PodContainerMiB = 128;

    /// <summary>What each container of the pod rows rewrites per second.</summary>
    private const int PodDirtyMiBPerSecond = 1;

    private static readonly string[] PodContainers = ["memory", "memory2"];

    private static async Task AddPodRowsAsync(Report report, int runs, string crest, RunningSubject a, string[] ra, RunningSubject b, string[] rb, string image, bool postCopy)
    {
        Console.Error.WriteLine($"bench: live migration of a pod of {PodContainers.Length} x {PodContainerMiB} MiB, stop-copy{(postCopy ? " and post-copy" : "")}, {runs} runs each");
        var n = 0;
        for (var r = 0; r < runs; r++)
        {
            foreach (var strategy in postCopy ? new[] { "stop-copy", "post-copy" } : ["stop-copy"])
            {
                var m = await MigratePodOnceAsync(crest, a, ra, b, rb, image, n++, strategy);
                var row = $"migrate pod {strategy}, {PodContainers.Length} x {PodContainerMiB} MiB, {PodDirtyMiBPerSecond} MiB/s rewritten each";
                report.Add($"{row}: downtime", "ms", "crest", m.Downtime);
                report.Add($"{row}: frozen", "ms", "crest", m.Frozen);
                report.Add($"{row}: total", "ms", "crest", m.Total);
                if (strategy == "post-copy")
                {
                    report.Add($"{row}: memory arriving after the switch", "ms", "crest", m.FaultIn);
                }
            }
        }

        report.Note($"pod migration rows: `crest migrate pod --strategy stop-copy|post-copy` of a fresh pod of {PodContainers.Length} memory-dirtier containers holding {PodContainerMiB} MiB each, each rewriting {PodDirtyMiBPerSecond} MiB/s; "
            + "downtime: the longest of the containers' (each one's last CRI log line on A to its first on B); frozen: freeze to every container running on B; total: the whole command; "
            + "memory arriving after the switch (post-copy): from every container running on B until the last page of the last container arrived. "
            + "Every run then has each workload check every word of its memory on B (`verify ok`).");
    }

    private static async Task<Migration> MigratePodOnceAsync(string crest, RunningSubject a, string[] ra, RunningSubject b, string[] rb, string image, int n, string strategy)
    {
        var (podA, logsA) = PodWithLogs(a, $"migpod{n}", "a");
        var (podB, logsB) = PodWithLogs(b, $"migpod{n}", "b");
        var pod = (await Crest(crest, [.. ra, "runp", podA])).Trim();
        string? newPod = null;
        try
        {
            foreach (var name in PodContainers)
            {
                var config = a.Dir.Combine($"{name}-pod-{n}.json");
                await File.WriteAllTextAsync(config, $$"""
                    {"metadata": {"name": "{{name}}"}, "image": {"image": "{{image}}"},
                     "command": ["/{{WorkloadPath}}", "{{PodContainerMiB}}", "{{PodDirtyMiBPerSecond}}", "{{TickMs}}"], "log_path": "{{name}}.log",
                     "linux": {"security_context": {"namespace_options": {"pid": "CONTAINER"} } } }
                    """);
                var id = (await Crest(crest, [.. ra, "create", pod, config, podA])).Trim();
                await Crest(crest, [.. ra, "start", id]);
            }

            foreach (var name in PodContainers)
            {
                await Until(() => Ticks(Path.Combine(logsA, name + ".log")).Count >= 100, $"{name} of the pod on A to tick 100 times");
            }

            using var doc = JsonDocument.Parse(await Crest(crest, [.. ra, "migrate", "pod", pod, "--to", "unix://" + b.Socket, "--pod-config", podB, "--strategy", strategy, "-o", "json"]));
            var r = doc.RootElement;
            newPod = r.GetProperty("podSandboxId").GetString()!;
            foreach (var c in r.GetProperty("containers").EnumerateArray())
            {
                var name = c.GetProperty("name").GetString()!;
                var log = Path.Combine(logsB, name + ".log");
                var lastOnA = Ticks(Path.Combine(logsA, name + ".log"))[^1];
                await Until(() => Ticks(log).Any(t => t.Number > lastOnA.Number + 3), $"{name} to tick on B");
                var first = Ticks(log).First(t => t.Number > lastOnA.Number);
                if (first.Number != lastOnA.Number + 1)
                {
                    throw new InvalidOperationException($"{name} on B went on from tick {first.Number}, A's last was {lastOnA.Number}: ticks were lost or repeated");
                }

                await Crest(crest, [.. rb, "exec", c.GetProperty("containerId").GetString()!, "/bin/busybox", "killall", "-USR1", "memory-dirtier"]);
                await Until(() => Read(log).Contains("verify ", StringComparison.Ordinal), $"{name}'s memory check on B");
                var verdict = Read(log).Split('\n').First(l => l.Contains("verify ", StringComparison.Ordinal));
                if (!verdict.Contains("verify ok", StringComparison.Ordinal))
                {
                    throw new InvalidOperationException($"the memory of {name} did not arrive whole on B ({strategy} pod): {verdict}");
                }
            }

            if (r.GetProperty("downtimeMs").ValueKind != JsonValueKind.Number)
            {
                throw new InvalidOperationException($"crest migrate pod measured no downtime ({strategy}): a container logged nothing on one side");
            }

            // Post-copy: how long after the pod ran on B its last page arrived (FaultIn carries it for these rows).
            var pageTransfer = r.GetProperty("pageTransferMs") is { ValueKind: JsonValueKind.Number } pt ? pt.GetDouble() : 0;
            return new Migration(r.GetProperty("downtimeMs").GetDouble(), 0, r.GetProperty("frozenMs").GetDouble(), r.GetProperty("totalMs").GetDouble(), pageTransfer);
        }
        finally
        {
            await Crest(crest, [.. ra, "rmp", pod]);
            if (newPod is not null)
            {
                await Crest(crest, [.. rb, "rmp", newPod]);
            }
        }
    }
}
