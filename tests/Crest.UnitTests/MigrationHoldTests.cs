using Crest.Core;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>
/// A live migration's source is frozen on purpose: its hold is recorded with the freeze, survives a crestd restart (which
/// resumes any other paused container), and ends with Resume, KillFrozen, a stop or the container's exit.
/// </summary>
public sealed class MigrationHoldTests : IDisposable
{
    private readonly RuntimeHarness _h = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A running container frozen by a migration's dump (nothing captured: the fake runtime writes no images).</summary>
    private async Task<ContainerRecord> FrozenForMigrationAsync(string id)
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await _h.RecordRunningAsync(id, pod.Id, Ct);
        var work = Path.Combine(_h.Paths.Root, "work-" + id);
        await _h.Containers.DumpAsync(c.Id, Path.Combine(work, "images"), work, tcpEstablished: false, (_, _, _) => Task.CompletedTask, Ct, leaveFrozen: true);
        return (await _h.Store.GetContainerAsync(c.Id, Ct))!;
    }

    [Fact]
    public async Task A_migration_freeze_records_its_hold_and_a_restart_keeps_the_container_frozen()
    {
        var c = await FrozenForMigrationAsync("c1");

        Assert.NotNull(c.MigrationHold);
        Assert.Equal(0, c.MigrationHold.PageServerPid);
        Assert.Equal("paused", _h.Runtimes.StatusOf(c.Id));

        await _h.Containers.RecoverAsync(Ct);

        Assert.Equal("paused", _h.Runtimes.StatusOf(c.Id));
        Assert.DoesNotContain("resume c1", _h.Runtimes.Calls);
        var after = (await _h.Store.GetContainerAsync(c.Id, Ct))!;
        Assert.Equal(ContainerState.Running, after.State);
        Assert.Equal(c.MigrationHold, after.MigrationHold);
    }

    [Fact]
    public async Task A_paused_container_without_a_hold_is_still_resumed_at_restart()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await _h.RecordRunningAsync("c1", pod.Id, Ct);
        _h.Runtimes.Know(c.Id, "paused", 4242);

        await _h.Containers.RecoverAsync(Ct);

        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
    }

    [Fact]
    public async Task A_dump_that_is_not_a_migrations_records_no_hold()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await _h.RecordRunningAsync("c1", pod.Id, Ct);
        var work = Path.Combine(_h.Paths.Root, "work");

        await _h.Containers.DumpAsync(c.Id, Path.Combine(work, "images"), work, tcpEstablished: false, (_, _, _) => Task.CompletedTask, Ct);

        Assert.Null((await _h.Store.GetContainerAsync(c.Id, Ct))!.MigrationHold);
        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
    }

    [Fact]
    public async Task Resume_thaws_the_source_and_ends_its_hold_and_a_second_resume_changes_nothing()
    {
        var c = await FrozenForMigrationAsync("c1");

        await _h.Containers.ThawAsync(c.Id, Ct);
        await _h.Containers.ThawAsync(c.Id, Ct);

        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
        Assert.Null((await _h.Store.GetContainerAsync(c.Id, Ct))!.MigrationHold);
        Assert.Single(_h.Runtimes.Calls, call => call == "resume c1");
    }

    [Fact]
    public async Task KillFrozen_kills_the_source_while_frozen_and_ends_its_hold()
    {
        var c = await FrozenForMigrationAsync("c1");

        await _h.Containers.KillFrozenAsync(c.Id, Ct);

        var after = await _h.Containers.GetAsync(c.Id, Ct);
        Assert.Equal(ContainerState.Exited, after.State);
        Assert.Null(after.MigrationHold);
        // The kill came before any thaw: not one instruction ran after the checkpoint.
        var calls = _h.Runtimes.Calls.ToList();
        Assert.True(calls.IndexOf("kill c1") < calls.LastIndexOf("resume c1") || !calls.Contains("resume c1"), string.Join(", ", calls));
    }

    [Fact]
    public async Task Stopping_a_held_source_kills_it_while_frozen_instead_of_signalling_it_to_end()
    {
        var c = await FrozenForMigrationAsync("c1");

        await _h.Containers.StopAsync(c.Id, TimeSpan.FromSeconds(30), Ct);

        var after = (await _h.Store.GetContainerAsync(c.Id, Ct))!;
        Assert.Equal(ContainerState.Exited, after.State);
        Assert.Equal(137, after.ExitCode);
        Assert.Null(after.MigrationHold);
    }

    [Fact]
    public async Task A_held_container_the_runtime_calls_running_keeps_its_hold_at_restart()
    {
        // A post-copy page server's CRIU holds the processes and lets the freezer go until it ends.
        var c = await FrozenForMigrationAsync("c1");
        _h.Runtimes.Know(c.Id, "running", 4242);

        await _h.Containers.RecoverAsync(Ct);

        Assert.NotNull((await _h.Store.GetContainerAsync(c.Id, Ct))!.MigrationHold);
    }

    [Fact]
    public async Task Killing_a_held_container_the_runtime_calls_running_freezes_it_first()
    {
        var c = await FrozenForMigrationAsync("c1");
        _h.Runtimes.Know(c.Id, "running", 4242);
        var before = _h.Runtimes.Calls.Count;

        await _h.Containers.KillFrozenAsync(c.Id, Ct);

        var calls = _h.Runtimes.Calls.Skip(before).Where(call => call.Split(' ')[0] is "pause" or "kill" or "resume").ToList();
        Assert.Equal(["pause c1", "kill c1"], calls.Take(2));
    }

    [Fact]
    public async Task A_held_source_is_not_checkpointed_again_so_no_failed_dump_can_resume_it()
    {
        var c = await FrozenForMigrationAsync("c1");
        var work = Path.Combine(_h.Paths.Root, "work-again");

        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.DumpAsync(c.Id, Path.Combine(work, "images"), work, tcpEstablished: false, (_, _, _) => Task.CompletedTask, Ct));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains("frozen for a live migration", e.Message, StringComparison.Ordinal);
        Assert.Equal("paused", _h.Runtimes.StatusOf(c.Id));
        Assert.Single(_h.Runtimes.Calls, call => call == "pause c1");
    }

    public void Dispose() => _h.Dispose();
}
