using Crest.Core;
using Crest.Runtime;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>
/// StartContainer of a container made from a checkpoint: restored through conmon, or EXITED with StartError and
/// nothing left registered; the checkpoint kept for it is removed either way.
/// </summary>
public sealed class ContainerRestoreTests : IDisposable
{
    private readonly RuntimeHarness _h = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A container created from a staged checkpoint (with or without CRIU's inventory), not started yet.</summary>
    private async Task<ContainerRecord> CreatedFromCheckpointAsync(bool complete = true, CriuRestoreOptions? criu = null)
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var plan = await _h.StagedRestorePlanAsync(complete, Ct);
        return await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), plan with { Criu = criu ?? new CriuRestoreOptions() }, Ct);
    }

    [Fact]
    public async Task Create_keeps_the_checkpoint_in_the_container_and_starts_nothing()
    {
        var c = await CreatedFromCheckpointAsync();

        Assert.Equal(ContainerState.Created, c.State);
        Assert.Equal(_h.Layout.Container(c.Id).RestoreDir, c.RestoreDir);
        Assert.True(File.Exists(Path.Combine(c.RestoreDir!, "checkpoint", "inventory.img")));
        Assert.Null(_h.Runtimes.StatusOf(c.Id));
    }

    [Fact]
    public async Task Start_restores_through_conmon_with_the_checkpoint_layers_options_and_removes_the_checkpoint()
    {
        var c = await CreatedFromCheckpointAsync();

        await _h.Containers.StartAsync(c.Id, Ct);

        var after = await _h.Containers.GetAsync(c.Id, Ct);
        Assert.Equal(ContainerState.Running, after.State);
        Assert.Null(after.RestoreDir);
        Assert.Equal([c.Id], _h.RestoreSteps.Applied);
        var restore = Assert.Single(_h.Runtimes.Restored);
        Assert.Equal(_h.Layout.Container(c.Id).RestoreImages, restore.ImagePath);
        Assert.Equal(_h.Layout.Container(c.Id).BundleDir, restore.Monitor.Bundle);
        Assert.Equal(["--file-locks"], restore.RuntimeFlags());
        Assert.Equal([$"restore {c.Id}"], _h.Runtimes.Calls.Where(call => call.EndsWith(c.Id, StringComparison.Ordinal)));
        Assert.False(Directory.Exists(_h.Layout.Container(c.Id).RestoreDir));
    }

    [Fact]
    public async Task The_plans_criu_options_chosen_at_create_are_what_start_restores_with()
    {
        var c = await CreatedFromCheckpointAsync(criu: new CriuRestoreOptions { TcpEstablished = true });

        await _h.Containers.StartAsync(c.Id, Ct);

        var restore = Assert.Single(_h.Runtimes.Restored);
        Assert.Equal(["--file-locks", "--tcp-established"], restore.RuntimeFlags());
    }

    [Fact]
    public async Task A_container_recorded_before_plans_carried_criu_options_restores_with_file_locks_only()
    {
        var c = await CreatedFromCheckpointAsync(criu: new CriuRestoreOptions { TcpEstablished = true });
        await _h.Store.PutContainerAsync(c with { RestoreCriu = null }, Ct);

        await _h.Containers.StartAsync(c.Id, Ct);

        Assert.Equal(["--file-locks"], Assert.Single(_h.Runtimes.Restored).RuntimeFlags());
    }

    [Fact]
    public async Task A_restore_left_stopped_gives_criu_its_configuration_for_that_restore_only()
    {
        var c = await CreatedFromCheckpointAsync(criu: new CriuRestoreOptions { FileLocks = true, LeaveStopped = true });
        var bundle = _h.Layout.Container(c.Id);
        string? duringRestore = null;
        _h.Runtimes.DuringRestore = _ => duringRestore = File.ReadAllText(bundle.CriuConfig);

        await _h.Containers.StartAsync(c.Id, Ct);

        Assert.Equal(bundle.CriuConfig, CriuConfigAnnotation(bundle));
        Assert.Equal("leave-stopped\nnetwork-lock skip\n", duringRestore);
        // The runtime hands the same file to the container's later checkpoints: gone, CRIU leaves those running.
        Assert.False(File.Exists(bundle.CriuConfig));
    }

    [Fact]
    public async Task A_restore_left_stopped_that_fails_leaves_no_criu_configuration()
    {
        var c = await CreatedFromCheckpointAsync(criu: new CriuRestoreOptions { LeaveStopped = true });
        _h.Runtimes.Failures["restore"] = new CrestException(ErrorKind.FailedPrecondition, "the OCI runtime could not create it: criu failed");

        await Assert.ThrowsAsync<CrestException>(() => _h.Containers.StartAsync(c.Id, Ct));

        Assert.False(File.Exists(_h.Layout.Container(c.Id).CriuConfig));
    }

    [Fact]
    public async Task A_restore_of_tcp_connections_keeps_criu_network_lock()
    {
        var c = await CreatedFromCheckpointAsync(criu: new CriuRestoreOptions { TcpEstablished = true, LeaveStopped = true });
        var bundle = _h.Layout.Container(c.Id);
        string? duringRestore = null;
        _h.Runtimes.DuringRestore = _ => duringRestore = File.ReadAllText(bundle.CriuConfig);

        await _h.Containers.StartAsync(c.Id, Ct);

        Assert.Equal("leave-stopped\n", duringRestore);
    }

    [Fact]
    public async Task A_restore_that_runs_at_once_skips_only_criu_network_lock()
    {
        var c = await CreatedFromCheckpointAsync();
        var bundle = _h.Layout.Container(c.Id);
        string? duringRestore = null;
        _h.Runtimes.DuringRestore = _ => duringRestore = File.ReadAllText(bundle.CriuConfig);

        await _h.Containers.StartAsync(c.Id, Ct);

        Assert.Equal("network-lock skip\n", duringRestore);
        Assert.False(File.Exists(bundle.CriuConfig));
    }

    [Fact]
    public async Task A_criu_configuration_a_crashed_restore_left_is_removed_at_start()
    {
        var c = await CreatedFromCheckpointAsync(criu: new CriuRestoreOptions { LeaveStopped = true });
        var bundle = _h.Layout.Container(c.Id);
        await File.WriteAllTextAsync(bundle.CriuConfig, "leave-stopped\n", Ct);

        await _h.Containers.RecoverAsync(Ct);

        Assert.False(File.Exists(bundle.CriuConfig));
    }

    private static string? CriuConfigAnnotation(ContainerBundle bundle)
    {
        using var config = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(bundle.ConfigJson));
        return config.RootElement.TryGetProperty("annotations", out var annotations) && annotations.TryGetProperty(CriuRestoreOptions.ConfigAnnotation, out var path)
            ? path.GetString()
            : null;
    }

    [Fact]
    public async Task Create_puts_the_checkpoints_log_where_the_new_container_logs()
    {
        await _h.ImportImageAsync(Ct);
        var logs = Path.Combine(_h.Paths.Root, "pod-logs");
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod() with { LogDirectory = logs }, Ct);
        var plan = await _h.StagedRestorePlanAsync(true, Ct);
        await File.WriteAllTextAsync(Path.Combine(plan.StagingDir, "container.log"), "2026-12-03T09:00:00Z stdout F counted 41\n", Ct);

        var c = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container() with { LogPath = "app/0.log" }, plan with { LogCopy = "container.log" }, Ct);

        Assert.Equal(Path.Combine(logs, "app", "0.log"), c.LogFile);
        Assert.Contains("counted 41", await File.ReadAllTextAsync(c.LogFile, Ct), StringComparison.Ordinal);
        Assert.False(Directory.Exists(plan.StagingDir));
    }

    [Fact]
    public async Task An_incomplete_checkpoint_is_a_start_error_and_nothing_is_restored()
    {
        var c = await CreatedFromCheckpointAsync(complete: false);

        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.StartAsync(c.Id, Ct));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains("inventory.img", e.Message, StringComparison.Ordinal);
        await AssertStartErrorAsync(c.Id);
        Assert.Empty(_h.RestoreSteps.Applied);
    }

    [Fact]
    public async Task A_rootfs_step_that_fails_is_a_start_error_with_its_reason()
    {
        var c = await CreatedFromCheckpointAsync();
        _h.RestoreSteps.Failure = new CrestException(ErrorKind.PermissionDenied, "the rootfs diff writes outside the rootfs");

        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.StartAsync(c.Id, Ct));

        Assert.Equal(ErrorKind.PermissionDenied, e.Kind);
        var after = await AssertStartErrorAsync(c.Id);
        Assert.Contains("outside the rootfs", after.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_restore_the_runtime_refuses_is_a_start_error_with_nothing_left_registered()
    {
        var c = await CreatedFromCheckpointAsync();
        _h.Runtimes.Failures["restore"] = new CrestException(ErrorKind.FailedPrecondition, "the OCI runtime could not create it: criu failed");

        await Assert.ThrowsAsync<CrestException>(() => _h.Containers.StartAsync(c.Id, Ct));

        await AssertStartErrorAsync(c.Id);
        Assert.Contains($"delete {c.Id}", _h.Runtimes.Calls);
    }

    /// <summary>Mounts something in the container's restore directory, as an archive's page images served in place are.</summary>
    private string MountPagesIn(ContainerRecord c)
    {
        var mount = Path.Combine(c.RestoreDir!, ".archive-pages");
        Directory.CreateDirectory(mount);
        _h.Linux.Mount("index", mount, "erofs", Crest.Linux.MountOptions.ReadOnly, "device=/proc/self/fd/9");
        return mount;
    }

    [Theory]
    [InlineData("restored")]
    [InlineData("refused")]
    [InlineData("removed unstarted")]
    public async Task What_is_mounted_in_the_restore_directory_is_unmounted_before_the_directory_goes(string end)
    {
        var c = await CreatedFromCheckpointAsync();
        var mount = MountPagesIn(c);
        if (end == "refused")
        {
            _h.Runtimes.Failures["restore"] = new CrestException(ErrorKind.FailedPrecondition, "criu failed");
        }

        if (end == "removed unstarted")
        {
            await _h.Containers.RemoveAsync(c.Id, Ct);
        }
        else
        {
            var failed = await Record.ExceptionAsync(() => _h.Containers.StartAsync(c.Id, Ct));
            Assert.Equal(end == "refused", failed is not null);
        }

        Assert.Contains($"Unmount {mount}", _h.Linux.Calls);
        Assert.DoesNotContain(mount, _h.Linux.Mounts);
        Assert.False(Directory.Exists(_h.Layout.Container(c.Id).RestoreDir));
    }

    [Fact]
    public async Task Stopping_a_container_that_was_never_restored_needs_no_runtime()
    {
        var c = await CreatedFromCheckpointAsync();

        await _h.Containers.StopAsync(c.Id, TimeSpan.FromSeconds(10), Ct);

        Assert.Equal(ContainerState.Exited, (await _h.Containers.GetAsync(c.Id, Ct)).State);
        Assert.DoesNotContain(_h.Runtimes.Calls, call => call.StartsWith("kill ", StringComparison.Ordinal));
    }

    private async Task<ContainerRecord> AssertStartErrorAsync(string id)
    {
        var after = await _h.Containers.GetAsync(id, Ct);
        Assert.Equal((ContainerState.Exited, 128, "StartError"), (after.State, after.ExitCode, after.Reason));
        Assert.Null(after.RestoreDir);
        Assert.Null(_h.Runtimes.StatusOf(id));
        Assert.False(Directory.Exists(_h.Layout.Container(id).RestoreDir));
        return after;
    }

    public void Dispose() => _h.Dispose();
}
