using Crest.Core;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>What crestd makes of its records when it starts again: from the store, conmon's files and the runtime's state.</summary>
public sealed class ContainerRecoveryTests : IDisposable
{
    private readonly RuntimeHarness _h = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_half_made_container_is_rolled_back()
    {
        await _h.Store.PutContainerAsync(RuntimeStoreConformance.Container("half", "s1", ContainerState.Creating), Ct);
        Directory.CreateDirectory(_h.Layout.Container("half").Upper);

        var (kept, rolledBack) = await _h.Containers.RecoverAsync(Ct);

        Assert.Equal((0, 1), (kept, rolledBack));
        Assert.Null(await _h.Store.GetContainerAsync("half", Ct));
        Assert.False(Directory.Exists(_h.Layout.Container("half").Dir));
    }

    [Fact]
    public async Task A_created_container_the_runtime_runs_was_started_before_crestd_died_and_is_running()
    {
        await _h.Store.PutContainerAsync(RuntimeStoreConformance.Container("c1", "s1", ContainerState.Created) with { Pid = 10 }, Ct);
        var bundle = _h.Layout.Container("c1");
        Directory.CreateDirectory(bundle.StateDir);
        await File.WriteAllTextAsync(bundle.ConmonPidFile, Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture), Ct);
        _h.Runtimes.Know("c1", "running", 777);

        await _h.Containers.RecoverAsync(Ct);

        var c = await _h.Containers.GetAsync("c1", Ct);
        Assert.Equal(ContainerState.Running, c.State);
        Assert.Equal(777, c.Pid);
    }

    [Fact]
    public async Task A_process_the_runtime_created_during_a_start_crestd_did_not_finish_is_adopted_and_the_next_start_only_starts_it()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var made = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct);
        // conmon and runc create ran; crestd died before recording the pid.
        var bundle = _h.Layout.Container(made.Id);
        Directory.CreateDirectory(bundle.StateDir);
        await File.WriteAllTextAsync(bundle.ConmonPidFile, Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture), Ct);
        _h.Runtimes.Know(made.Id, "created", 555);

        await _h.Containers.RecoverAsync(Ct);

        var c = await _h.Containers.GetAsync(made.Id, Ct);
        Assert.Equal((ContainerState.Created, 555), (c.State, c.Pid));
        await _h.Containers.StartAsync(made.Id, Ct);
        Assert.Equal(ContainerState.Running, (await _h.Containers.GetAsync(made.Id, Ct)).State);
        Assert.DoesNotContain($"create {made.Id}", _h.Runtimes.Calls);
    }

    [Fact]
    public async Task A_created_container_whose_rootfs_a_reboot_unmounted_is_exited_rather_than_started_on_a_bare_directory()
    {
        await _h.Store.PutContainerAsync(RuntimeStoreConformance.Container("c1", "s1", ContainerState.Created), Ct);

        await _h.Containers.RecoverAsync(Ct);

        var c = await _h.Containers.GetAsync("c1", Ct);
        Assert.Equal((ContainerState.Exited, 128, "StartError"), (c.State, c.ExitCode, c.Reason));
        Assert.Contains("before this container was started", c.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_running_container_with_an_exit_file_is_exited_with_its_code()
    {
        await _h.RecordRunningAsync("c1", "s1", Ct);
        Directory.CreateDirectory(_h.Layout.ExitDir);
        await File.WriteAllTextAsync(_h.Layout.Container("c1").ExitFile, "3", Ct);

        var (kept, _) = await _h.Containers.RecoverAsync(Ct);

        var c = await _h.Containers.GetAsync("c1", Ct);
        Assert.Equal(1, kept);
        Assert.Equal((ContainerState.Exited, 3, "Error"), (c.State, c.ExitCode, c.Reason));
    }

    [Fact]
    public async Task A_running_container_whose_monitor_is_gone_is_exited_unknown()
    {
        await _h.RecordRunningAsync("c1", "s1", Ct);
        File.Delete(_h.Layout.Container("c1").ConmonPidFile);

        await _h.Containers.RecoverAsync(Ct);

        var c = await _h.Containers.GetAsync("c1", Ct);
        Assert.Equal((ContainerState.Exited, 255, "Unknown"), (c.State, c.ExitCode, c.Reason));
        Assert.Contains("conmon", c.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_running_container_whose_monitor_lives_stays_running()
    {
        await _h.RecordRunningAsync("c1", "s1", Ct);

        await _h.Containers.RecoverAsync(Ct);

        Assert.Equal(ContainerState.Running, (await _h.Containers.GetAsync("c1", Ct)).State);
    }

    [Fact]
    public async Task A_container_made_from_a_checkpoint_whose_rootfs_is_gone_after_a_reboot_is_a_start_error()
    {
        await _h.Store.PutContainerAsync(RuntimeStoreConformance.Container("r1", "s1", ContainerState.Created) with { RestoreDir = _h.Layout.Container("r1").RestoreDir }, Ct);

        await _h.Containers.RecoverAsync(Ct);

        var c = await _h.Containers.GetAsync("r1", Ct);
        Assert.Equal((ContainerState.Exited, 128, "StartError"), (c.State, c.ExitCode, c.Reason));
        Assert.Null(c.RestoreDir);
    }

    [Fact]
    public async Task A_restore_cut_by_a_restart_lets_go_of_what_is_mounted_in_its_restore_directory()
    {
        var restoreDir = _h.Layout.Container("r2").RestoreDir;
        var pages = Path.Combine(restoreDir, ".archive-pages");
        Directory.CreateDirectory(pages);
        _h.Linux.Mount("index", pages, "erofs", Crest.Linux.MountOptions.ReadOnly, "device=/proc/self/fd/9");
        await _h.Store.PutContainerAsync(RuntimeStoreConformance.Container("r2", "s1", ContainerState.Created) with { RestoreDir = restoreDir, RestoreStartedAt = DateTimeOffset.UnixEpoch }, Ct);

        await _h.Containers.RecoverAsync(Ct);

        Assert.Equal("StartError", (await _h.Containers.GetAsync("r2", Ct)).Reason);
        Assert.Contains($"Unmount {pages}", _h.Linux.Calls);
        Assert.False(Directory.Exists(restoreDir));
    }

    [Fact]
    public async Task A_failing_cleanup_step_still_rolls_back_and_the_others_recover()
    {
        await _h.Store.PutContainerAsync(RuntimeStoreConformance.Container("half", "s1", ContainerState.Creating), Ct);
        await _h.RecordRunningAsync("c1", "s1", Ct);
        _h.Runtimes.Failures["delete"] = new CrestException(ErrorKind.Internal, "runc delete failed");

        var (kept, rolledBack) = await _h.Containers.RecoverAsync(Ct);

        Assert.Equal((1, 1), (kept, rolledBack));
    }

    public void Dispose() => _h.Dispose();
}
