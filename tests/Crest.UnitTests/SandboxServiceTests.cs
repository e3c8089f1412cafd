using Crest.Core;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>RunPodSandbox and its rollback, on fakes: whatever step fails, nothing the pod held is left behind.</summary>
public sealed class SandboxServiceTests : IDisposable
{
    private readonly RuntimeHarness _h = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_pod_is_ready_with_its_network_namespace_shm_and_infra_and_removal_releases_all_of_it()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);

        Assert.Equal(SandboxState.Ready, pod.State);
        Assert.Equal("10.88.0.2", Assert.Single(pod.Ips));
        Assert.Equal("running", _h.Runtimes.StatusOf(pod.Id));
        Assert.Contains(pod.NetnsPath!, _h.Linux.Mounts);

        await _h.Pods.RemoveAsync(pod.Id, Ct);

        Assert.Empty(await _h.Store.ListSandboxesAsync(Ct));
        Assert.Empty(_h.Linux.Mounts);
        Assert.Empty(_h.Network.Attached);
        Assert.Null(_h.Runtimes.StatusOf(pod.Id));
        Assert.False(Directory.Exists(_h.Layout.SandboxDir(pod.Id)));
    }

    [Fact]
    public async Task Removal_deletes_conmons_attach_links_to_the_infra_and_container_bundles()
    {
        // conmon links <state>/attach/ID to each bundle; once the bundle is deleted the link dangles (the soak found hundreds).
        var pod = await _h.ReadyPodAsync(Ct);
        var c = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct);
        Directory.CreateDirectory(_h.Layout.SocketDir);
        var links = new[] { (pod.Id, _h.Layout.Sandbox(pod.Id).BundleDir), (c.Id, _h.Layout.Container(c.Id).Dir) }
            .Select(l => File.CreateSymbolicLink(Path.Combine(_h.Layout.SocketDir, l.Item1), l.Item2).FullName).ToList();

        await _h.Pods.RemoveAsync(pod.Id, Ct);

        Assert.All(links, l => Assert.Null(new FileInfo(l).LinkTarget));
        Assert.Empty(Directory.EnumerateFileSystemEntries(_h.Layout.SocketDir));
    }

    [Fact]
    public async Task Removing_a_stopped_pod_does_not_kill_its_infra_again_and_deletes_it_without_force()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);

        await _h.Pods.StopAsync(pod.Id, Ct);
        await _h.Pods.RemoveAsync(pod.Id, Ct);

        // Stop killed it and conmon recorded the exit: the removal has nothing left to kill (each runc call is a process).
        Assert.Single(_h.Runtimes.Calls, call => call.StartsWith("kill", StringComparison.Ordinal) && call.EndsWith(pod.Id, StringComparison.Ordinal));
        Assert.Contains($"delete {pod.Id}", _h.Runtimes.Calls);
        Assert.Empty(await _h.Store.ListSandboxesAsync(Ct));
    }

    [Fact]
    public async Task A_failed_network_add_rolls_the_pod_back()
    {
        _h.Network.AddFailure = new CrestException(ErrorKind.Internal, "CNI plugin bridge ADD failed: no IPs left");

        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct));

        Assert.Contains("no IPs left", e.Message, StringComparison.Ordinal);
        await AssertNothingLeftAsync();
    }

    [Theory]
    [InlineData("create")]
    [InlineData("start")]
    public async Task A_failed_infra_step_rolls_the_pod_back_and_releases_its_address(string failingVerb)
    {
        _h.Runtimes.Failures[failingVerb] = new CrestException(ErrorKind.FailedPrecondition, $"runc {failingVerb} failed");

        await Assert.ThrowsAsync<CrestException>(() => _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct));

        await AssertNothingLeftAsync();
        Assert.Empty(_h.Network.Attached);
    }

    [Fact]
    public async Task A_failed_namespace_pin_after_the_infra_started_removes_the_infra_too()
    {
        _h.Linux.FailMountOf = "/ns/ipc";

        await Assert.ThrowsAsync<CrestException>(() => _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct));

        await AssertNothingLeftAsync();
        Assert.Contains(_h.Runtimes.Calls, c => c.StartsWith("delete ", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_second_pod_with_the_same_name_and_attempt_is_refused_and_the_first_is_kept()
    {
        var first = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);

        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct));

        Assert.Equal(ErrorKind.AlreadyExists, e.Kind);
        Assert.Equal(SandboxState.Ready, (await _h.Sandboxes.GetAsync(first.Id, Ct)).State);
    }

    [Fact]
    public async Task An_unconfigured_runtime_handler_is_refused_before_anything_is_made()
    {
        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Sandboxes.RunAsync(RuntimeHarness.Pod() with { RuntimeHandler = "kata" }, Ct));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Empty(_h.Linux.Calls);
        Assert.Empty(await _h.Store.ListSandboxesAsync(Ct));
    }

    [Fact]
    public async Task A_pod_whose_infra_died_is_not_ready_and_stopping_it_twice_succeeds()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        _h.Linux.Alive.Remove(pod.InfraPid);

        Assert.Equal(SandboxState.NotReady, (await _h.Sandboxes.GetAsync(pod.Id, Ct)).State);
        await _h.Pods.StopAsync(pod.Id, Ct);
        await _h.Pods.StopAsync(pod.Id, Ct);

        Assert.Empty(_h.Network.Attached);
    }

    private async Task AssertNothingLeftAsync()
    {
        Assert.Empty(await _h.Store.ListSandboxesAsync(Ct));
        Assert.Empty(_h.Linux.Mounts);
        Assert.Empty(_h.Network.Attached);
        Assert.False(Directory.Exists(Path.Combine(_h.Paths.State, "sandboxes")) && Directory.EnumerateFileSystemEntries(Path.Combine(_h.Paths.State, "sandboxes")).Any());
    }

    public void Dispose() => _h.Dispose();
}
