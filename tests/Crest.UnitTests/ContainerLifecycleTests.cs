using Crest.Core;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>The container state machine on fakes: create, start, stop, remove, what each refuses and with which code.</summary>
public sealed class ContainerLifecycleTests : IDisposable
{
    private readonly RuntimeHarness _h = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Create_start_stop_remove_walks_the_states_and_leaves_nothing_behind()
    {
        var pod = await _h.ReadyPodAsync(Ct);

        var created = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct);
        var bundle = _h.Layout.Container(created.Id);
        Assert.Equal(ContainerState.Created, created.State);
        Assert.Equal("created", _h.Runtimes.StatusOf(created.Id));
        Assert.Contains(bundle.Rootfs, _h.Linux.Mounts);
        Assert.True(File.Exists(bundle.ConfigJson));
        Assert.Contains(created.SnapshotKey!, await _h.ImageMetadata.LeasedSnapshotsAsync(Ct));

        await _h.Containers.StartAsync(created.Id, Ct);
        Assert.Equal(ContainerState.Running, (await _h.Containers.GetAsync(created.Id, Ct)).State);

        await _h.Containers.StopAsync(created.Id, TimeSpan.FromSeconds(5), Ct);
        var stopped = await _h.Containers.GetAsync(created.Id, Ct);
        Assert.Equal(ContainerState.Exited, stopped.State);
        Assert.Equal(128 + 15, stopped.ExitCode);
        Assert.Equal("Error", stopped.Reason);

        await _h.Containers.RemoveAsync(created.Id, Ct);
        Assert.Empty(await _h.Containers.ListAsync(Ct));
        Assert.DoesNotContain(bundle.Rootfs, _h.Linux.Mounts);
        Assert.False(Directory.Exists(bundle.Dir));
        Assert.Empty(await _h.ImageMetadata.LeasedSnapshotsAsync(Ct));
        Assert.Null(_h.Runtimes.StatusOf(created.Id));
    }

    [Fact]
    public async Task A_stop_that_saw_the_exit_has_the_runtime_forget_the_container_so_removal_needs_no_runtime_call()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var c = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct);
        await _h.Containers.StartAsync(c.Id, Ct);

        await _h.Containers.StopAsync(c.Id, TimeSpan.Zero, Ct);

        Assert.Equal(ContainerState.Exited, (await _h.Containers.GetAsync(c.Id, Ct)).State);
        Assert.Null(_h.Runtimes.StatusOf(c.Id));
        Assert.Equal($"delete {c.Id}", _h.Runtimes.Calls.Last(call => call.EndsWith(c.Id, StringComparison.Ordinal)));
    }

    [Fact]
    public async Task Starting_a_running_container_is_a_failed_precondition()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var c = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct);
        await _h.Containers.StartAsync(c.Id, Ct);

        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.StartAsync(c.Id, Ct));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains("only a CREATED container can be started", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_start_the_runtime_refuses_leaves_the_container_exited_with_start_error()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var c = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct);
        _h.Runtimes.Failures["start"] = new CrestException(ErrorKind.Internal, "runc start failed: exec: \"/bin/sh\": permission denied");

        await Assert.ThrowsAsync<CrestException>(() => _h.Containers.StartAsync(c.Id, Ct));

        var after = await _h.Containers.GetAsync(c.Id, Ct);
        Assert.Equal(ContainerState.Exited, after.State);
        Assert.Equal(128, after.ExitCode);
        Assert.Equal("StartError", after.Reason);
        Assert.Contains("permission denied", after.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Stopping_and_removing_twice_succeed()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var c = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct);
        await _h.Containers.StartAsync(c.Id, Ct);

        await _h.Containers.StopAsync(c.Id, TimeSpan.Zero, Ct);
        await _h.Containers.StopAsync(c.Id, TimeSpan.Zero, Ct);
        await _h.Containers.RemoveAsync(c.Id, Ct);
        await _h.Containers.RemoveAsync(c.Id, Ct);

        Assert.Empty(await _h.Store.ListContainersAsync(Ct));
    }

    [Fact]
    public async Task A_create_the_runtime_refuses_is_rolled_back_with_its_mount_and_lease()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        _h.Runtimes.Failures["create"] = new CrestException(ErrorKind.FailedPrecondition, "the OCI runtime could not create it");

        await Assert.ThrowsAsync<CrestException>(() => _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct));

        Assert.Empty(await _h.Store.ListContainersAsync(Ct));
        Assert.DoesNotContain(_h.Linux.Mounts, m => m.StartsWith(_h.Paths.Containers, StringComparison.Ordinal));
        Assert.Empty(await _h.ImageMetadata.LeasedSnapshotsAsync(Ct));
        Assert.Empty(Directory.Exists(_h.Paths.Containers) ? Directory.EnumerateFileSystemEntries(_h.Paths.Containers) : []);
    }

    [Fact]
    public async Task Create_refuses_a_missing_image_a_taken_name_and_a_pod_that_is_not_ready()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct);

        var missing = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container("other") with { Image = "localhost/none:1" }, Ct));
        var taken = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct));
        await _h.Pods.StopAsync(pod.Id, Ct);
        var notReady = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container("late"), Ct));

        Assert.Equal(ErrorKind.NotFound, missing.Kind);
        Assert.Equal(ErrorKind.AlreadyExists, taken.Kind);
        Assert.Equal(ErrorKind.FailedPrecondition, notReady.Kind);
    }

    [Fact]
    public async Task A_container_whose_process_ended_reads_as_exited_with_its_code()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var c = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct);
        await _h.Containers.StartAsync(c.Id, Ct);

        Directory.CreateDirectory(_h.Layout.ExitDir);
        await File.WriteAllTextAsync(_h.Layout.Container(c.Id).ExitFile, "0", Ct);

        var after = await _h.Containers.GetAsync(c.Id, Ct);
        Assert.Equal(ContainerState.Exited, after.State);
        Assert.Equal("Completed", after.Reason);
    }

    [Fact]
    public async Task An_exec_that_times_out_is_deadline_exceeded_and_leaves_no_exec_files()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var c = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct);
        await _h.Containers.StartAsync(c.Id, Ct);
        _h.Runtimes.ExecResult = null;

        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.ExecSyncAsync(c.Id, ["sleep", "60"], TimeSpan.FromSeconds(1), Ct));

        Assert.Equal(ErrorKind.DeadlineExceeded, e.Kind);
        Assert.Contains("sleep 60", e.Message, StringComparison.Ordinal);
        Assert.Empty(Directory.EnumerateFiles(_h.Layout.Container(c.Id).StateDir, "exec-*"));
    }

    [Fact]
    public async Task An_exec_in_a_container_that_is_not_running_is_refused()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var c = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct);

        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.ExecSyncAsync(c.Id, ["true"], TimeSpan.Zero, Ct));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.DoesNotContain(_h.Runtimes.Calls, call => call.StartsWith("exec ", StringComparison.Ordinal));
    }

    public void Dispose() => _h.Dispose();
}
