using System.Text.Json;
using Crest.Core;

using static Crest.E2ETests.CheckpointSteps;
using static Crest.E2ETests.MigrationTests;

namespace Crest.E2ETests;

/// <summary>
/// kill -9 of either crestd at each step of <c>crest migrate</c> (a crash point, or the test's own SIGKILL), then that
/// crestd started again on the same roots while the client goes on: afterwards exactly one copy of the workload runs, on
/// the target if the switch had happened (the source, frozen since its checkpoint, never ran again), else on the source
/// (nothing of it left on the target), and the client says which.
/// </summary>
[Collection(TwoNodes.Collection)]
public sealed class MigrationCrashTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static Dictionary<string, string> Armed(string point) => new() { [CrashPoints.Variable] = point };

    private static Task<(int ExitCode, string Stdout, string Stderr)> MigrateAsync(TwoNodes nodes, string id, string podConfig, string strategy = "stop-copy") =>
        Binaries.RunCrestAsync([.. nodes.A.R, "migrate", id, "--to", nodes.B.Crestd.Endpoint, "--pod-config", podConfig, "--strategy", strategy, "-o", "json"]);

    /// <summary>Waits (bounded) until <paramref name="node"/>'s crestd died by SIGKILL while the migration still runs.</summary>
    private static async Task CrashedAsync(TwoNodes.Node node, Task<(int ExitCode, string Stdout, string Stderr)> migrating)
    {
        var exit = node.Crestd.Process.WaitForExitAsync(Ct);
        var first = await Task.WhenAny(exit, migrating).WaitAsync(TimeSpan.FromSeconds(180), Ct);
        if (first != exit)
        {
            var m = await migrating;
            Assert.Fail($"the migration ended ({m.ExitCode}) before crestd reached its crash point: {m.Stderr}\n{node.Crestd.Log}");
        }

        Assert.True(node.Crestd.Process.ExitCode == 137, $"crestd was to die by SIGKILL; it exited {node.Crestd.Process.ExitCode}: {node.Crestd.Log}");
    }

    /// <summary>Waits (bounded) until B's post-copy restore handed the processes over (they run and fault pages in), the migration still going.</summary>
    private static async Task RestoredOnBAsync(TwoNodes nodes, Task<(int ExitCode, string Stdout, string Stderr)> migrating)
    {
        var containersB = nodes.B.Dir.Combine("root", "containers");
        bool Restored() => Directory.Exists(containersB)
            && Directory.EnumerateFiles(containersB, "restore.log", SearchOption.AllDirectories)
                .Any(f => File.ReadAllText(f).Contains("Restore finished successfully", StringComparison.Ordinal));
        await Crest.TestKit.Eventually.UntilAsync(() => migrating.IsCompleted || Restored(), "B's post-copy restore to finish", TimeSpan.FromSeconds(90), Ct);
        Assert.False(migrating.IsCompleted, "the migration ended before a crestd could be killed: " + (migrating.IsCompleted ? (await migrating).Stderr : ""));
    }

    /// <summary>The failed migration was undone: the source counts on from where it froze, and nothing of it is on the target.</summary>
    private static async Task AssertOnlyTheSourceRunsAsync(TwoNodes nodes, string id, string logA, (int ExitCode, string Stdout, string Stderr) migrated)
    {
        Assert.True(migrated.ExitCode == 1, $"migrate was to fail and undo ({migrated.ExitCode}): {migrated.Stderr}");
        Assert.Contains("undone: the container runs on", migrated.Stderr, StringComparison.Ordinal);
        Assert.Equal("CONTAINER_RUNNING", await StateAsync(nodes.A.R, id));
        var log = await CountPassesAsync(logA, LastCount(await ReadLogAsync(logA)) + 2, "the source did not run again after the undo");
        var counts = CountLine().Matches(log).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(Enumerable.Range(1, counts.Count), counts);
        Assert.Equal("", await RunAsync([.. nodes.B.R, "ps", "-a", "-q"]));
        Assert.Equal("", await RunAsync([.. nodes.B.R, "pods", "-q"]));
        var archivesB = nodes.B.Dir.Combine("root", "migrations");
        Assert.True(!Directory.Exists(archivesB) || !Directory.EnumerateFileSystemEntries(archivesB).Any(), "an archive is left on B");
    }

    [Fact]
    public async Task Source_crestd_killed_after_the_freeze_before_answering_keeps_the_source_frozen_until_the_client_resumes_it()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migcra", environmentA: Armed(CrashPoints.MigrationSourceFrozen));
        var image = await RegistryBusyboxOnAAsync(nodes);
        var (id, logA) = await RunCounterOnAAsync(nodes, image);
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");

        var migrating = MigrateAsync(nodes, id, podB);
        await CrashedAsync(nodes.A, migrating);
        await nodes.A.RestartAsync();
        var migrated = await migrating;

        await AssertOnlyTheSourceRunsAsync(nodes, id, logA, migrated);
        // The client waited for A and resumed the source, which A's restart had kept frozen.
        Assert.Contains($"waiting for {nodes.A.Crestd.Endpoint} to answer (resuming {id}", migrated.Stderr, StringComparison.Ordinal);
        Assert.Contains("kept frozen", await nodes.A.Crestd.LoggedAsync("kept frozen"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Source_crestd_killed_after_the_target_runs_never_runs_the_source_again_and_the_client_kills_it_once_it_is_back()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migcrb", environmentA: Armed(CrashPoints.MigrationSourceKilling));
        var image = await RegistryBusyboxOnAAsync(nodes);
        var (id, logA) = await RunCounterOnAAsync(nodes, image);
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");

        var migrating = MigrateAsync(nodes, id, podB);
        await CrashedAsync(nodes.A, migrating);
        // Frozen since its checkpoint: what A logged so far is all it ever logs.
        var logAtCrash = await ReadLogAsync(logA);
        await nodes.A.RestartAsync();
        var migrated = await migrating;

        Assert.True(migrated.ExitCode == 0, $"migrate failed ({migrated.ExitCode}): {migrated.Stderr}\nA: {nodes.A.Crestd.Log}");
        Assert.Contains($"waiting for {nodes.A.Crestd.Endpoint} to answer (killing the frozen {id})", migrated.Stderr, StringComparison.Ordinal);
        using var report = JsonDocument.Parse(migrated.Stdout);
        var newId = report.RootElement.GetProperty("containerId").GetString()!;
        // Exactly one copy: none left on A, one running on B, counting on from where A froze.
        Assert.Equal("", await RunAsync([.. nodes.A.R, "ps", "-a", "-q"]));
        Assert.Equal(newId, await RunAsync([.. nodes.B.R, "ps", "-q"]));
        var logB = nodes.B.Dir.Combine("logs-mig", "counter.log");
        var log = await CountPassesAsync(logB, LastCount(logAtCrash) + 3, "the migrated counter does not count on B");
        var counts = CountLine().Matches(log).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(Enumerable.Range(1, counts.Count), counts);
        Assert.Equal(logAtCrash, await ReadLogAsync(logA));
        Assert.Contains("kept frozen", await nodes.A.Crestd.LoggedAsync("kept frozen"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Source_crestd_killed_while_the_target_faults_pages_in_keeps_its_page_server_and_the_target_copy_is_the_only_one()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migcrc");
        await RequirePostCopyAsync(nodes);
        var image = await RegistryBusyboxOnAAsync(nodes);
        // Large enough that its pages still stream when A's crestd dies.
        const long bytes = 512L << 20;
        var id = await RunMemoryWorkloadOnAAsync(nodes, image, bytes);
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");
        var logA = nodes.A.Dir.Combine("logs-mig", "memory.log");

        var migrating = MigrateAsync(nodes, id, podB, "post-copy");
        await RestoredOnBAsync(nodes, migrating);
        await nodes.A.KillAsync();
        var logAtCrash = await ReadLogAsync(logA);
        await nodes.A.RestartAsync();
        var migrated = await migrating;

        Assert.True(migrated.ExitCode == 0, $"migrate failed ({migrated.ExitCode}): {migrated.Stderr}\nA: {nodes.A.Crestd.Log}\nB: {nodes.B.Crestd.Log}");
        using var report = JsonDocument.Parse(migrated.Stdout);
        Assert.True(report.RootElement.GetProperty("bytesAfterSwitch").GetInt64() >= bytes, migrated.Stdout);
        var newId = report.RootElement.GetProperty("containerId").GetString()!;
        Assert.Equal("", await RunAsync([.. nodes.A.R, "ps", "-a", "-q"]));
        Assert.Equal(newId, await RunAsync([.. nodes.B.R, "ps", "-q"]));
        // B counts on with all its memory; A never ran again; one copy of the workload on this machine.
        var lastOnA = LastCount(logAtCrash);
        var log = await Crest.TestKit.Eventually.UntilAsync(() => ReadLogAsync(nodes.B.Dir.Combine("logs-mig", "memory.log")), l => l.Contains($"count {lastOnA + 3} ", StringComparison.Ordinal),
            "the migrated workload to count on B", describe: l => l[^Math.Min(400, l.Length)..], ct: Ct);
        var after = log.Split('\n').SkipWhile(l => !l.Contains($"count {lastOnA + 1} ", StringComparison.Ordinal)).Where(l => l.Contains("count", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(after);
        Assert.All(after, l => Assert.EndsWith($" len {bytes} mid ok", l, StringComparison.Ordinal));
        Assert.Equal(logAtCrash, await ReadLogAsync(logA));
        AssertOneMemoryWorkload(nodes);
        Assert.True(nodes.A.Crestd.Log.Contains("kept frozen", StringComparison.Ordinal), $"A's restart did not keep the source frozen: {nodes.A.Crestd.Log}\nmigrate: {migrated.Stderr}");
        TestContext.Current.TestOutputHelper?.WriteLine(migrated.Stderr);
    }

    [Fact]
    public async Task Target_crestd_killed_while_receiving_the_archive_leaves_the_source_running_and_its_restart_nothing_on_the_target()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migcrd", environmentB: Armed(CrashPoints.MigrationArchiveReceiving));
        var image = await RegistryBusyboxOnAAsync(nodes);
        var (id, logA) = await RunCounterOnAAsync(nodes, image);
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");

        var migrating = MigrateAsync(nodes, id, podB);
        await CrashedAsync(nodes.B, migrating);
        await nodes.B.RestartAsync();
        var migrated = await migrating;

        // No restore was asked for, so the source ran again at once; the target's pod went once B answered.
        Assert.Contains($"waiting for {nodes.B.Crestd.Endpoint} to answer (removing pod", migrated.Stderr, StringComparison.Ordinal);
        await AssertOnlyTheSourceRunsAsync(nodes, id, logA, migrated);
    }

    [Fact]
    public async Task Target_crestd_killed_after_criu_restored_before_answering_has_its_copy_removed_before_the_source_resumes()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migcre", environmentB: Armed(CrashPoints.ContainerRestoreUnrecorded));
        var image = await RegistryBusyboxOnAAsync(nodes);
        var (id, logA) = await RunCounterOnAAsync(nodes, image);
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");

        var migrating = MigrateAsync(nodes, id, podB);
        await CrashedAsync(nodes.B, migrating);
        await nodes.B.RestartAsync();
        var migrated = await migrating;

        // B's restart adopted the restored copy as running; the client found it by its migration label and removed it
        // before it resumed A.
        Assert.Contains("adopted as RUNNING", await nodes.B.Crestd.LoggedAsync("adopted as RUNNING"), StringComparison.Ordinal);
        Assert.Contains("undo: removed the restored container", migrated.Stderr, StringComparison.Ordinal);
        Assert.True(migrated.Stderr.IndexOf("undo: removed the restored container", StringComparison.Ordinal) < migrated.Stderr.IndexOf("undone:", StringComparison.Ordinal), migrated.Stderr);
        await AssertOnlyTheSourceRunsAsync(nodes, id, logA, migrated);
    }

    [Fact]
    public async Task A_target_that_stays_down_leaves_the_source_frozen_and_held_and_the_commands_the_client_names_end_it()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migcrf", environmentB: Armed(CrashPoints.ContainerRestoreUnrecorded));
        var image = await RegistryBusyboxOnAAsync(nodes);
        var (id, logA) = await RunCounterOnAAsync(nodes, image);
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");

        var migrated = await Binaries.RunCrestAsync([.. nodes.A.R, "migrate", id, "--to", nodes.B.Crestd.Endpoint, "--pod-config", podB, "--wait-for-node", "2"]);

        // B may run a copy, and it did not answer: the source is not resumed, and the client says what ends it.
        Assert.True(migrated.ExitCode == 1, $"migrate was to fail ({migrated.ExitCode}): {migrated.Stderr}");
        Assert.Contains($"undo stopped: {nodes.B.Crestd.Endpoint} did not answer within 2 s", migrated.Stderr, StringComparison.Ordinal);
        Assert.Contains($"crest -r {nodes.A.Crestd.Endpoint} resume {id}", migrated.Stderr, StringComparison.Ordinal);
        Assert.Contains($"crest -r {nodes.A.Crestd.Endpoint} rm {id}", migrated.Stderr, StringComparison.Ordinal);
        Assert.Equal(137, await nodes.B.WaitForCrashAsync(TimeSpan.FromSeconds(10)));
        // crest inspect shows the hold.
        var status = (await InspectAsync(nodes.A.R, id)).GetProperty("status");
        Assert.Equal("CONTAINER_RUNNING", status.GetProperty("state").GetString());
        Assert.Equal("FrozenForMigration", status.GetProperty("reason").GetString());
        Assert.Contains("frozen for a live migration since", status.GetProperty("message").GetString(), StringComparison.Ordinal);
        var frozenLog = await ReadLogAsync(logA);

        // B comes back with the restored copy adopted; the operator removes it there, then resumes the source.
        await nodes.B.RestartAsync();
        var copy = await RunAsync([.. nodes.B.R, "ps", "-a", "-q"]);
        Assert.NotEqual("", copy);
        Assert.Equal(frozenLog, await ReadLogAsync(logA));
        await RunAsync([.. nodes.B.R, "rm", copy]);
        var podOnB = await RunAsync([.. nodes.B.R, "pods", "-q"]);
        await RunAsync([.. nodes.B.R, "stopp", podOnB]);
        await RunAsync([.. nodes.B.R, "rmp", podOnB]);
        Assert.Equal(id, await RunAsync([.. nodes.A.R, "resume", id]));

        await CountPassesAsync(logA, LastCount(frozenLog) + 2, "the source did not run after crest resume");
        var after = (await InspectAsync(nodes.A.R, id)).GetProperty("status");
        Assert.False(after.TryGetProperty("reason", out var reason) && reason.GetString() == "FrozenForMigration", after.ToString());
        Assert.Equal("", await RunAsync([.. nodes.B.R, "ps", "-a", "-q"]));
    }

    [Fact]
    public async Task Target_crestd_killed_while_its_post_copy_copy_faults_pages_in_leaves_exactly_one_copy()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migcrg");
        await RequirePostCopyAsync(nodes);
        var image = await RegistryBusyboxOnAAsync(nodes);
        const long bytes = 512L << 20;
        var id = await RunMemoryWorkloadOnAAsync(nodes, image, bytes);
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");
        var logA = nodes.A.Dir.Combine("logs-mig", "memory.log");

        var migrating = MigrateAsync(nodes, id, podB, "post-copy");
        await RestoredOnBAsync(nodes, migrating);
        await nodes.B.KillAsync();
        await nodes.B.RestartAsync();
        var migrated = await migrating;

        // Either end is one copy: the client gave B's copy up (its transfer no longer known) and resumed A, or the
        // pages had all arrived before B's crestd died and A was killed.
        TestContext.Current.TestOutputHelper?.WriteLine(migrated.Stderr);
        string logOfTheCopy;
        if (migrated.ExitCode == 0)
        {
            Assert.Equal("", await RunAsync([.. nodes.A.R, "ps", "-a", "-q"]));
            Assert.NotEqual("", await RunAsync([.. nodes.B.R, "ps", "-q"]));
            logOfTheCopy = nodes.B.Dir.Combine("logs-mig", "memory.log");
        }
        else
        {
            Assert.True(migrated.ExitCode == 1, $"migrate ({migrated.ExitCode}): {migrated.Stderr}\nB: {nodes.B.Crestd.Log}");
            Assert.Contains("undone: the container runs on", migrated.Stderr, StringComparison.Ordinal);
            Assert.Equal("", await RunAsync([.. nodes.B.R, "ps", "-a", "-q"]));
            Assert.Equal("CONTAINER_RUNNING", await StateAsync(nodes.A.R, id));
            logOfTheCopy = logA;
        }

        var before = LastCount(await ReadLogAsync(logOfTheCopy));
        var log = await Crest.TestKit.Eventually.UntilAsync(() => ReadLogAsync(logOfTheCopy), l => LastCount(l) > before + 2,
            "the one copy to count on", describe: l => l[^Math.Min(400, l.Length)..], ct: Ct);
        Assert.All(log.Split('\n').Where(l => l.Contains("count", StringComparison.Ordinal)), l => Assert.EndsWith($" len {bytes} mid ok", l, StringComparison.Ordinal));
        AssertOneMemoryWorkload(nodes);
    }

    /// <remarks>
    /// Post-copy too: the page servers the killed crestd left serving are found through the holds and killed before any
    /// container is thawed, so none is left.
    /// </remarks>
    [Theory]
    [InlineData("stop-copy")]
    [InlineData("post-copy")]
    public async Task Source_crestd_killed_after_freezing_a_whole_pod_keeps_it_frozen_until_the_client_resumes_every_container(string strategy)
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migcrp", environmentA: Armed(CrashPoints.MigrationPodFrozen));
        if (strategy == "post-copy")
        {
            await RequirePostCopyAsync(nodes);
        }

        var image = await RegistryBusyboxOnAAsync(nodes);
        var (podId, logsA) = await PodMigrationTests.RunTwoCountersOnAAsync(nodes, image);
        var podB = await WritePodAsync(nodes.B.Dir, "podmig", "uid-podmig-b");

        var migrating = PodMigrationTests.MigratePodAsync(nodes, podId, podB, "--strategy", strategy);
        await CrashedAsync(nodes.A, migrating);
        await nodes.A.RestartAsync();
        var migrated = await migrating;

        // Exactly one copy, the source's: both counters resumed on A and counting on, nothing on B.
        Assert.True(migrated.ExitCode == 1, $"migrate pod was to fail and undo ({migrated.ExitCode}): {migrated.Stderr}");
        Assert.Contains("undone: the pod runs on", migrated.Stderr, StringComparison.Ordinal);
        Assert.Contains($"waiting for {nodes.A.Crestd.Endpoint} to answer (resuming", migrated.Stderr, StringComparison.Ordinal);
        Assert.Equal(podId, await RunAsync([.. nodes.A.R, "pods", "-q"]));
        foreach (var log in logsA)
        {
            var text = await CountPassesAsync(log, LastCount(await ReadLogAsync(log)) + 2, "a source counter did not run again after the undo");
            var counts = CountLine().Matches(text).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
            Assert.Equal(Enumerable.Range(1, counts.Count), counts);
        }

        Assert.Equal("", await RunAsync([.. nodes.B.R, "ps", "-a", "-q"]));
        Assert.Equal("", await RunAsync([.. nodes.B.R, "pods", "-q"]));
        Assert.Contains("kept frozen", await nodes.A.Crestd.LoggedAsync("kept frozen"), StringComparison.Ordinal);
        if (strategy == "post-copy")
        {
            // Each container's page server, left serving by the killed crestd, was found through its hold and killed.
            var log = await nodes.A.Crestd.LoggedAsync("killing the post-copy page server");
            Assert.Equal(2, System.Text.RegularExpressions.Regex.Count(log, "killing the post-copy page server"));
        }

        // The restart swept the held pod checkpoint, and no page server outlived the undo.
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.A.Dir.Combine("root", "migrations")));
        Assert.Empty(ProcessesWith("checkpoint", "--lazy-pages", nodes.A.Dir.Combine("root")));
    }
}
