using Crest.Core;
using Crest.Oci;
using Crest.Runtime;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>The runtime's part of a checkpoint: the container is always resumed, whatever fails or is cancelled.</summary>
public sealed class ContainerDumpTests : IDisposable
{
    private readonly RuntimeHarness _h = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private async Task<ContainerRecord> RunningContainerAsync()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        return await _h.RecordRunningAsync("c1", pod.Id, Ct);
    }

    private static Task NoCapture(ContainerRecord c, string upper, CancellationToken ct) => Task.CompletedTask;

    [Fact]
    public async Task A_dump_pauses_checkpoints_captures_the_upper_dir_and_resumes_in_that_order()
    {
        var c = await RunningContainerAsync();
        string? captured = null;

        var dump = await _h.Containers.DumpAsync(c.Id, "/images", "/work", tcpEstablished: false, (_, upper, _) =>
        {
            captured = upper;
            Assert.Equal("paused", _h.Runtimes.StatusOf(c.Id));
            return Task.CompletedTask;
        }, Ct);

        Assert.Equal(["pause c1", "checkpoint c1", "resume c1"], _h.Runtimes.Calls.Where(IsDumpStep));
        Assert.Equal(_h.Layout.Container(c.Id).Upper, captured);
        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
        Assert.True(dump.Paused >= dump.CriuDump);
    }

    [Fact]
    public async Task A_dump_that_moves_no_tcp_connection_tells_criu_to_skip_its_network_lock_for_that_dump_only()
    {
        var c = await RunningContainerAsync();
        var config = _h.Layout.Container(c.Id).CriuConfig;
        string? duringDump = null;
        _h.Runtimes.DuringCheckpoint = _ => duringDump = File.ReadAllText(config);

        await _h.Containers.DumpAsync(c.Id, "/images", "/work", tcpEstablished: false, NoCapture, Ct);

        Assert.Equal("network-lock skip\n", duringDump);
        Assert.False(File.Exists(config));
    }

    [Fact]
    public async Task A_dump_that_moves_tcp_connections_keeps_criu_network_lock()
    {
        var c = await RunningContainerAsync();
        var config = _h.Layout.Container(c.Id).CriuConfig;
        bool? configDuringDump = null;
        _h.Runtimes.DuringCheckpoint = _ => configDuringDump = File.Exists(config);

        await _h.Containers.DumpAsync(c.Id, "/images", "/work", tcpEstablished: true, NoCapture, Ct);

        Assert.False(configDuringDump);
    }

    [Fact]
    public async Task The_runtimes_own_criu_configuration_comes_before_crests_lines()
    {
        var c = await RunningContainerAsync();
        var defaults = Path.Combine(Path.GetDirectoryName(_h.Layout.ExitDir)!, "runc.conf");
        await File.WriteAllTextAsync(defaults, "# the operator's\nghost-limit 2M", Ct);
        _h.Runtimes.CriuDefaultConfig = defaults;
        string? duringDump = null;
        _h.Runtimes.DuringCheckpoint = _ => duringDump = File.ReadAllText(_h.Layout.Container(c.Id).CriuConfig);

        await _h.Containers.DumpAsync(c.Id, "/images", "/work", tcpEstablished: false, NoCapture, Ct);

        Assert.Equal("# the operator's\nghost-limit 2M\nnetwork-lock skip\n", duringDump);
    }

    [Fact]
    public async Task A_failed_dump_leaves_no_criu_configuration()
    {
        var c = await RunningContainerAsync();
        _h.Runtimes.Failures["checkpoint"] = new CrestException(ErrorKind.Internal, "runc checkpoint failed");

        await Assert.ThrowsAsync<CrestException>(() => _h.Containers.DumpAsync(c.Id, "/images", "/work", false, NoCapture, Ct));

        Assert.False(File.Exists(_h.Layout.Container(c.Id).CriuConfig));
    }

    [Fact]
    public async Task A_migration_dump_leaves_the_container_frozen_until_it_is_thawed()
    {
        var c = await RunningContainerAsync();

        await _h.Containers.DumpAsync(c.Id, "/images", "/work", false, NoCapture, Ct, leaveFrozen: true);

        Assert.Equal("paused", _h.Runtimes.StatusOf(c.Id));
        await _h.Containers.ThawAsync(c.Id, Ct);
        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
        // Thawing again (a retried undo) changes nothing.
        await _h.Containers.ThawAsync(c.Id, Ct);
        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
    }

    [Fact]
    public async Task A_failed_migration_dump_is_resumed_even_though_it_was_to_stay_frozen()
    {
        var c = await RunningContainerAsync();
        _h.Runtimes.Failures["checkpoint"] = new CrestException(ErrorKind.Internal, "runc checkpoint failed");

        await Assert.ThrowsAsync<CrestException>(() => _h.Containers.DumpAsync(c.Id, "/images", "/work", false, NoCapture, Ct, leaveFrozen: true));

        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
    }

    [Fact]
    public async Task A_frozen_migration_source_is_killed_without_running_on()
    {
        var c = await RunningContainerAsync();
        await _h.Containers.DumpAsync(c.Id, "/images", "/work", false, NoCapture, Ct, leaveFrozen: true);

        await _h.Containers.KillFrozenAsync(c.Id, Ct);

        // SIGKILL reached it while frozen: no resume came before the kill.
        var steps = _h.Runtimes.Calls.SkipWhile(call => call != "checkpoint c1").Where(call => call.Split(' ')[0] is "kill" or "resume").ToList();
        Assert.Equal("kill c1", steps[0]);
        Assert.Equal("stopped", _h.Runtimes.StatusOf(c.Id));
    }

    [Fact]
    public async Task A_failed_checkpoint_still_resumes_the_container()
    {
        var c = await RunningContainerAsync();
        _h.Runtimes.Failures["checkpoint"] = new CrestException(ErrorKind.Internal, "runc checkpoint failed: criu failed: type NOTIFY errno 0");

        await Assert.ThrowsAsync<CrestException>(() => _h.Containers.DumpAsync(c.Id, "/images", "/work", false, NoCapture, Ct));

        Assert.Equal(["pause c1", "checkpoint c1", "resume c1"], _h.Runtimes.Calls.Where(IsDumpStep));
        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
    }

    [Fact]
    public async Task A_freeze_that_caught_a_task_in_vfork_thaws_until_its_child_ran_on_and_freezes_again_before_criu_dumps()
    {
        var c = await RunningContainerAsync();
        var sandbox = await _h.Sandboxes.GetAsync(c.SandboxId, Ct);
        // Caught in vfork at the first freeze, still there at the first look after the thaw, then gone.
        _h.Linux.VforkAnswers.Enqueue([4242]);
        _h.Linux.VforkAnswers.Enqueue([4242]);
        _h.Linux.VforkAnswers.Enqueue([]);

        await _h.Containers.DumpAsync(c.Id, "/images", "/work", tcpEstablished: false, NoCapture, Ct);

        Assert.Equal(["pause c1", "resume c1", "pause c1", "checkpoint c1", "resume c1"], _h.Runtimes.Calls.Where(IsDumpStep));
        Assert.All(_h.Linux.VforkReads, path => Assert.Equal(SpecBuilder.CgroupsPathOf(sandbox, c.Id), path));
        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
    }

    [Fact]
    public async Task A_task_that_stays_in_vfork_fails_the_dump_with_the_reason_before_criu_runs_and_the_container_runs_on()
    {
        var c = await RunningContainerAsync();
        _h.Linux.VforkAnswers.Enqueue([4242]);

        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.DumpAsync(c.Id, "/images", "/work", false, NoCapture, Ct, leaveFrozen: true));

        Assert.Equal(ErrorKind.Unavailable, e.Kind);
        Assert.Contains("task 4242 waited in vfork", e.Message, StringComparison.Ordinal);
        Assert.Contains("checkpoint it again", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("checkpoint c1", _h.Runtimes.Calls);
        Assert.Equal(ContainerService.VforkRefreezes + 1, _h.Runtimes.Calls.Count(call => call == "pause c1"));
        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
    }

    [Fact]
    public async Task A_dump_cancelled_while_frozen_still_resumes_the_container()
    {
        var c = await RunningContainerAsync();
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(Ct);

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => _h.Containers.DumpAsync(c.Id, "/images", "/work", false, async (_, _, ct) =>
        {
            await cancel.CancelAsync();
            ct.ThrowIfCancellationRequested();
        }, cancel.Token));

        Assert.Equal("resume c1", _h.Runtimes.Calls.Last(IsDumpStep));
        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
    }

    [Fact]
    public async Task A_failed_rootfs_capture_still_resumes_the_container()
    {
        var c = await RunningContainerAsync();

        await Assert.ThrowsAsync<IOException>(() => _h.Containers.DumpAsync(c.Id, "/images", "/work", false, (_, _, _) => throw new IOException("No space left on device"), Ct));

        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
    }

    [Fact]
    public async Task A_container_that_is_not_running_is_refused_before_any_pause()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        await _h.Store.PutContainerAsync(RuntimeStoreConformance.Container("c1", pod.Id, ContainerState.Exited), Ct);

        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.DumpAsync("c1", "/images", "/work", false, NoCapture, Ct));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains("CONTAINER_EXITED", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(_h.Runtimes.Calls, IsDumpStep);
    }

    private static bool IsDumpStep(string call) => call.Split(' ')[0] is "pause" or "checkpoint" or "resume";

    public void Dispose() => _h.Dispose();
}
