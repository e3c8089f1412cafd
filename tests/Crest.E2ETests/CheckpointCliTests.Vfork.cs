using System.Text.RegularExpressions;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

// A checkpoint whose freeze catches a task waiting in vfork, which CRIU cannot seize.
public partial class CheckpointCliTests
{
    /// <summary>
    /// A workload that spends a third of its time in vfork (its child sleeps 50 ms before its exec, the parent 50-150 ms after):
    /// checkpoints are taken until one's freeze caught the parent there, and every one succeeds (without the thaw and
    /// refreeze, CRIU waits out its 10 s freeze timeout on such a task and fails "Unseizable non-zombie ... state D").
    /// The last archive restores, and the restored process goes on from where it was frozen.
    /// </summary>
    [Fact]
    public async Task A_checkpoint_whose_freeze_caught_a_task_in_vfork_freezes_again_and_succeeds()
    {
        RequireCheckpointTools();
        using var dir = new TempDir("crest-e2e-vfork");
        await using var s = await StartAsync(dir);
        var bin = dir.CreateDirectory("vfork");
        await VforkWorkload.BuildAsync(bin, Ct);
        // Each in a pid namespace of its own: the restored copy gets back the pids it had, beside the running original.
        string Config(string name) => $$"""
            {"metadata": {"name": "{{name}}"}, "image": {"image": "localhost/e2e/busybox:v1"},
             "command": ["/vfork/vfork-loop", "50", "100"],
             "mounts": [{"container_path": "/vfork", "host_path": "{{bin}}", "readonly": true}],
             "log_path": "{{name}}.log", "linux": {"security_context": {"namespace_options": {"pid": "CONTAINER"} } } }
            """;
        var config = dir.Combine("vfork.json");
        await File.WriteAllTextAsync(config, Config("vfork"), Ct);
        var podId = await s.Pods.RunAsync(s.PodConfig);
        var id = await RunAsync([.. s.R, "create", podId, config, s.PodConfig]);
        await RunAsync([.. s.R, "start", id]);
        var log = dir.Combine("logs-counter", "vfork.log");
        await Eventually.UntilAsync(() => ReadLogAsync(log), l => LastRound(l) >= 3, "the vfork workload to run", describe: l => l, ct: Ct);

        var archive = dir.Combine("vfork.tar");
        const int MaxCheckpoints = 16;
        var taken = 0;
        while (!s.Crestd.Log.Contains("waiting in vfork", StringComparison.Ordinal) && taken < MaxCheckpoints)
        {
            var checkpoint = await Binaries.RunCrestAsync([.. s.R, "checkpoint", "--export", archive, id]);
            taken++;
            Assert.True(checkpoint.ExitCode == 0, $"checkpoint {taken} failed: {checkpoint.Stderr}");
        }

        // A third of the freezes land in the wait: sixteen that all missed it would be one run in 650.
        Assert.True(s.Crestd.Log.Contains("waiting in vfork", StringComparison.Ordinal), $"no freeze of {taken} caught the task in vfork:\n{s.Crestd.Log}");
        var atCheckpoint = LastRound(await ReadLogAsync(log));
        await Eventually.UntilAsync(() => ReadLogAsync(log), l => LastRound(l) > atCheckpoint + 2, "the workload to run on after its checkpoints", ct: Ct);
        Assert.Equal("CONTAINER_RUNNING", await StateAsync(s.R, id));

        var restoreConfig = dir.Combine("vfork-restored.json");
        await File.WriteAllTextAsync(restoreConfig, Config("vfork-restored").Replace("localhost/e2e/busybox:v1", archive, StringComparison.Ordinal), Ct);
        var restored = await RunAsync([.. s.R, "create", podId, restoreConfig, s.PodConfig]);
        await RunAsync([.. s.R, "start", restored]);
        var restoredLog = await Eventually.UntilAsync(() => ReadLogAsync(dir.Combine("logs-counter", "vfork-restored.log")), l => LastRound(l) > atCheckpoint + 2,
            "the restored workload to go on", describe: l => l, ct: Ct);
        // The restored log starts with the archived one; the process goes on from the round it was frozen after, so the
        // rounds run from 1 without a second start.
        Assert.Equal(Enumerable.Range(1, Rounds(restoredLog).Count), Rounds(restoredLog));
    }

    private static List<int> Rounds(string log) =>
        [.. RoundLine().Matches(log).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture))];

    private static int LastRound(string log) => Rounds(log).DefaultIfEmpty(0).Max();

    [GeneratedRegex(@"stdout F round (\d+)")]
    private static partial Regex RoundLine();
}
