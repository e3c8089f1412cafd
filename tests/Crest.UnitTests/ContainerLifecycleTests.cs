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
        Assert.Null(_h.Runtimes.StatusOf(created.Id)); // nothing runs until StartContainer
        Assert.Equal(0, created.Pid);
        Assert.Contains(bundle.Rootfs, _h.Linux.Mounts);
        Assert.True(File.Exists(bundle.ConfigJson));
        Assert.Contains(created.SnapshotKey!, await _h.ImageMetadata.LeasedSnapshotsAsync(Ct));

        await _h.Containers.StartAsync(created.Id, Ct);
        var running = await _h.Containers.GetAsync(created.Id, Ct);
        Assert.Equal(ContainerState.Running, running.State);
        Assert.Equal("running", _h.Runtimes.StatusOf(created.Id));
        Assert.True(running.Pid > 0);

        await _h.Containers.StopAsync(created.Id, TimeSpan.FromSeconds(5), Ct);
        var stopped = await _h.Containers.GetAsync(created.Id, Ct);
        Assert.Equal(ContainerState.Exited, stopped.State);
        Assert.Equal(128 + 15, stopped.ExitCode);
        Assert.Equal("Error", stopped.Reason);
        Assert.DoesNotContain(bundle.Rootfs, _h.Linux.Mounts); // unmounted once the stop saw the exit
        Assert.True(Directory.Exists(bundle.Upper)); // what it wrote stays until removal

        await _h.Containers.RemoveAsync(created.Id, Ct);
        Assert.Empty(await _h.Containers.ListAsync(Ct));
        Assert.False(Directory.Exists(bundle.Dir));
        await _h.Reaper.IdleAsync().WaitAsync(TimeSpan.FromSeconds(10), Ct);
        Assert.Empty(Directory.EnumerateFileSystemEntries(_h.Paths.Trash));
        Assert.Empty(await _h.ImageMetadata.LeasedSnapshotsAsync(Ct));
        Assert.Null(_h.Runtimes.StatusOf(created.Id));
    }

    [Fact]
    public async Task Every_container_names_its_own_criu_configuration_and_a_requests_own_is_replaced()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var spec = RuntimeHarness.Container() with
        {
            Annotations = new Dictionary<string, string> { [CriuRestoreOptions.ConfigAnnotation] = "/var/lib/somewhere/action-script.conf", ["team"] = "a" },
        };

        var created = await _h.Containers.CreateAsync(pod.Id, spec, Ct);

        var bundle = _h.Layout.Container(created.Id);
        using var config = System.Text.Json.JsonDocument.Parse(await File.ReadAllBytesAsync(bundle.ConfigJson, Ct));
        var annotations = config.RootElement.GetProperty("annotations");
        Assert.Equal(bundle.CriuConfig, annotations.GetProperty(CriuRestoreOptions.ConfigAnnotation).GetString());
        Assert.Equal("a", annotations.GetProperty("team").GetString());
        // The CRI still shows what the request said.
        Assert.Equal("/var/lib/somewhere/action-script.conf", created.Spec.Annotations[CriuRestoreOptions.ConfigAnnotation]);
        Assert.False(File.Exists(bundle.CriuConfig));
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
    public async Task A_create_that_fails_after_the_mount_is_rolled_back_with_its_mount_and_lease()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var spec = RuntimeHarness.Container();
        spec = spec with { Security = spec.Security with { Seccomp = SeccompMode.Localhost, SeccompLocalhostPath = "/nonexistent/profile.json" } };

        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.CreateAsync(pod.Id, spec, Ct));

        Assert.Contains("/nonexistent/profile.json", e.Message, StringComparison.Ordinal);

        Assert.Empty(await _h.Store.ListContainersAsync(Ct));
        Assert.DoesNotContain(_h.Linux.Mounts, m => m.StartsWith(_h.Paths.Containers, StringComparison.Ordinal));
        Assert.Empty(await _h.ImageMetadata.LeasedSnapshotsAsync(Ct));
        Assert.Empty(Directory.Exists(_h.Paths.Containers) ? Directory.EnumerateFileSystemEntries(_h.Paths.Containers) : []);
    }

    [Fact]
    public async Task A_runtime_that_cannot_create_the_process_fails_the_start_and_leaves_the_container_exited_with_start_error()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var c = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct);
        _h.Runtimes.Failures["create"] = new CrestException(ErrorKind.FailedPrecondition, "the OCI runtime could not create it: exec: \"/no/such\": no such file or directory");

        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.StartAsync(c.Id, Ct));

        Assert.Contains("no such file or directory", e.Message, StringComparison.Ordinal);
        var after = await _h.Containers.GetAsync(c.Id, Ct);
        Assert.Equal((ContainerState.Exited, 128, "StartError"), (after.State, after.ExitCode, after.Reason));
        Assert.Contains("/no/such", after.Message, StringComparison.Ordinal);
        Assert.Null(_h.Runtimes.StatusOf(c.Id));
        await _h.Containers.RemoveAsync(c.Id, Ct);
        Assert.Empty(await _h.Store.ListContainersAsync(Ct));
        Assert.Empty(await _h.ImageMetadata.LeasedSnapshotsAsync(Ct));
    }

    [Fact]
    public async Task Stopping_a_created_container_that_never_ran_ends_it_without_asking_the_runtime()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var c = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct);

        await _h.Containers.StopAsync(c.Id, TimeSpan.FromSeconds(5), Ct);

        var after = await _h.Containers.GetAsync(c.Id, Ct);
        Assert.Equal(ContainerState.Exited, after.State);
        Assert.DoesNotContain(_h.Runtimes.Calls, call => call.EndsWith(c.Id, StringComparison.Ordinal));
        await Assert.ThrowsAsync<CrestException>(() => _h.Containers.StartAsync(c.Id, Ct));
    }

    [Fact]
    public async Task New_limits_for_a_created_container_go_into_its_config_json_and_reach_the_runtime_at_start()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var c = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct);

        await _h.Containers.UpdateResourcesAsync(c.Id, new ResourceSpec(CpuPeriod: 100_000, CpuQuota: 50_000, MemoryLimitBytes: 64 << 20), Ct);

        Assert.DoesNotContain(_h.Runtimes.Calls, call => call.StartsWith("update", StringComparison.Ordinal));
        using var config = System.Text.Json.JsonDocument.Parse(await File.ReadAllBytesAsync(_h.Layout.Container(c.Id).ConfigJson, Ct));
        var resources = config.RootElement.GetProperty("linux").GetProperty("resources");
        Assert.Equal(64 << 20, resources.GetProperty("memory").GetProperty("limit").GetInt64());
        Assert.Equal(50_000, resources.GetProperty("cpu").GetProperty("quota").GetInt64());
        Assert.Equal(System.Text.Json.JsonValueKind.Array, resources.GetProperty("devices").ValueKind); // the rest of the spec is kept
        Assert.Equal(64 << 20, (await _h.Containers.GetAsync(c.Id, Ct)).Spec.Resources.MemoryLimitBytes);
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
