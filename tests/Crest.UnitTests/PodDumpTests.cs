using Crest.Checkpoint;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Runtime;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>
/// The runtime's part of CheckpointPod: every selected container is paused before any is dumped, the shared state is
/// captured while all are frozen, and every paused container is resumed whatever fails or is cancelled.
/// </summary>
public sealed class PodDumpTests : IDisposable
{
    private readonly RuntimeHarness _h = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private async Task<SandboxRecord> PodWithAsync(params string[] ids)
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        foreach (var id in ids)
        {
            await _h.RecordRunningAsync(id, pod.Id, Ct);
        }

        return pod;
    }

    private static List<ContainerService.PodDumpTarget> Targets(params string[] ids) =>
        ids.Select(id => new ContainerService.PodDumpTarget(id, "/images/" + id, "/work/" + id, (_, _, _) => Task.CompletedTask)).ToList();

    /// <summary>The dump steps in phases: each phase's calls (in any order within a dump phase) all before the next phase's.</summary>
    private void AssertPhases(string[] pauses, string[] dumps, string[] after)
    {
        var calls = _h.Runtimes.Calls.Where(IsDumpStep).ToList();
        Assert.Equal(pauses, calls.Take(pauses.Length));
        Assert.Equal(dumps.Order(), calls.Skip(pauses.Length).Take(dumps.Length).Order());
        Assert.Equal(after, calls.Skip(pauses.Length + dumps.Length));
    }

    private static bool IsDumpStep(string call) => call.Split(' ')[0] is "pause" or "checkpoint" or "resume" or "kill";

    [Fact]
    public async Task Each_containers_criu_configuration_is_there_for_its_dump_and_gone_after()
    {
        var pod = await PodWithAsync("c1", "c2");
        var seen = new System.Collections.Concurrent.ConcurrentDictionary<string, string>();
        _h.Runtimes.DuringCheckpoint = o => seen[o.ContainerId] = File.ReadAllText(_h.Layout.Container(o.ContainerId).CriuConfig);

        await _h.Containers.DumpPodAsync(pod.Id, Targets("c1", "c2"), tcpEstablished: false, _ => Task.CompletedTask, killAfterDump: false, Ct);

        Assert.Equal("network-lock skip\n", seen["c1"]);
        Assert.Equal("network-lock skip\n", seen["c2"]);
        Assert.False(File.Exists(_h.Layout.Container("c1").CriuConfig));
        Assert.False(File.Exists(_h.Layout.Container("c2").CriuConfig));
    }

    [Fact]
    public async Task A_container_caught_in_vfork_is_thawed_alone_and_frozen_again_before_any_dump()
    {
        var pod = await PodWithAsync("c1", "c2");
        // c1's first look finds a task in vfork, the look after its thaw finds none; c2 has none.
        _h.Linux.VforkAnswers.Enqueue([4242]);
        _h.Linux.VforkAnswers.Enqueue([]);

        await _h.Containers.DumpPodAsync(pod.Id, Targets("c1", "c2"), tcpEstablished: false, _ => Task.CompletedTask, killAfterDump: false, Ct);

        AssertPhases(["pause c1", "pause c2", "resume c1", "pause c1"], ["checkpoint c1", "checkpoint c2"], ["resume c1", "resume c2"]);
        Assert.Equal("running", _h.Runtimes.StatusOf("c1"));
        Assert.Equal("running", _h.Runtimes.StatusOf("c2"));
    }

    [Fact]
    public async Task A_post_copy_pod_dump_that_fails_kills_every_page_server_it_started_before_it_resumes_the_pod()
    {
        var pod = await PodWithAsync("c1", "c2");
        var servers = new System.Collections.Concurrent.ConcurrentBag<string>();
        var targets = Targets("c1", "c2").Select(t => t with
        {
            LazyPageServer = "127.0.0.1:" + (t.ContainerId == "c1" ? "7001" : "7002"),
            // c2's rootfs capture fails after its page server started.
            CaptureRootfs = t.ContainerId == "c2" ? (_, _, _) => throw new IOException("No space left on device") : t.CaptureRootfs,
        }).ToList();
        _h.Runtimes.DuringCheckpoint = o => servers.Add(o.LazyPageServer!);

        await Assert.ThrowsAsync<IOException>(() => _h.Containers.DumpPodAsync(pod.Id, targets, false, _ => Task.CompletedTask, killAfterDump: false, Ct, holdFrozen: true));

        Assert.Equal(["127.0.0.1:7001", "127.0.0.1:7002"], servers.Order(StringComparer.Ordinal));
        // Both page servers were ended (the fake's are sleep processes standing in for runc and CRIU).
        Assert.Equal(2, _h.Runtimes.PageServers.Count);
        await Task.WhenAll(_h.Runtimes.PageServers.Select(p => p.Exit)).WaitAsync(TimeSpan.FromSeconds(10), Ct);
        Assert.Equal("running", _h.Runtimes.StatusOf("c1"));
        Assert.Equal("running", _h.Runtimes.StatusOf("c2"));
        Assert.Null((await _h.Store.GetContainerAsync("c1", Ct))!.MigrationHold);
    }

    [Fact]
    public async Task A_pod_dump_with_page_servers_must_hold_the_pod_frozen()
    {
        var pod = await PodWithAsync("c1");
        var targets = Targets("c1").Select(t => t with { LazyPageServer = "127.0.0.1:7001" }).ToList();

        await Assert.ThrowsAsync<ArgumentException>(() => _h.Containers.DumpPodAsync(pod.Id, targets, false, _ => Task.CompletedTask, killAfterDump: false, Ct));

        Assert.DoesNotContain(_h.Runtimes.Calls, c => c.StartsWith("pause", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Every_container_is_paused_before_the_first_dump_and_all_are_resumed_after_the_shared_state_is_captured()
    {
        var pod = await PodWithAsync("c1", "c2");
        var sharedSeen = new List<string?>();

        var dump = await _h.Containers.DumpPodAsync(pod.Id, Targets("c1", "c2"), tcpEstablished: false, _ =>
        {
            sharedSeen.Add(_h.Runtimes.StatusOf("c1"));
            sharedSeen.Add(_h.Runtimes.StatusOf("c2"));
            return Task.CompletedTask;
        }, killAfterDump: false, Ct);

        AssertPhases(["pause c1", "pause c2"], ["checkpoint c1", "checkpoint c2"], ["resume c1", "resume c2"]);
        Assert.Equal(["paused", "paused"], sharedSeen);
        Assert.Equal("running", _h.Runtimes.StatusOf("c1"));
        Assert.Equal("running", _h.Runtimes.StatusOf("c2"));
        Assert.Equal(2, dump.Containers.Count);
        Assert.All(dump.Containers, d => Assert.Equal(dump.Frozen, d.Paused));
    }

    [Fact]
    public async Task A_pod_dump_held_for_a_migration_leaves_every_container_frozen_and_held_until_each_is_thawed()
    {
        var pod = await PodWithAsync("c1", "c2");

        await _h.Containers.DumpPodAsync(pod.Id, Targets("c1", "c2"), false, _ => Task.CompletedTask, killAfterDump: false, Ct, holdFrozen: true);

        AssertPhases(["pause c1", "pause c2"], ["checkpoint c1", "checkpoint c2"], []);
        Assert.Equal("paused", _h.Runtimes.StatusOf("c1"));
        Assert.Equal("paused", _h.Runtimes.StatusOf("c2"));
        Assert.NotNull((await _h.Containers.GetAsync("c1", Ct)).MigrationHold);
        Assert.NotNull((await _h.Containers.GetAsync("c2", Ct)).MigrationHold);

        await _h.Containers.ThawAsync("c1", Ct);

        Assert.Equal("running", _h.Runtimes.StatusOf("c1"));
        Assert.Null((await _h.Containers.GetAsync("c1", Ct)).MigrationHold);
        Assert.Equal("paused", _h.Runtimes.StatusOf("c2"));
    }

    [Fact]
    public async Task A_held_pod_dump_that_fails_holds_nothing_and_resumes_every_container()
    {
        var pod = await PodWithAsync("c1", "c2");
        _h.Runtimes.Failures["checkpoint c2"] = new CrestException(ErrorKind.Internal, "runc checkpoint failed");

        await Assert.ThrowsAsync<CrestException>(() => _h.Containers.DumpPodAsync(pod.Id, Targets("c1", "c2"), false, _ => Task.CompletedTask, false, Ct, holdFrozen: true));

        Assert.Equal("running", _h.Runtimes.StatusOf("c1"));
        Assert.Equal("running", _h.Runtimes.StatusOf("c2"));
        Assert.Null((await _h.Containers.GetAsync("c1", Ct)).MigrationHold);
        Assert.Null((await _h.Containers.GetAsync("c2", Ct)).MigrationHold);
    }

    [Fact]
    public async Task A_container_that_fails_to_dump_fails_the_call_naming_it_and_every_container_is_resumed()
    {
        var pod = await PodWithAsync("c1", "c2", "c3");
        _h.Runtimes.Failures["checkpoint c2"] = new CrestException(ErrorKind.Internal, "runc checkpoint failed: criu failed: type NOTIFY errno 0");

        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.DumpPodAsync(pod.Id, Targets("c1", "c2", "c3"), false, _ => Task.CompletedTask, false, Ct));

        Assert.Contains("container c2", e.Message, StringComparison.Ordinal);
        var calls = _h.Runtimes.Calls.Where(IsDumpStep).ToList();
        Assert.Equal(["pause c1", "pause c2", "pause c3"], calls.Take(3));
        Assert.Contains("checkpoint c2", calls);
        Assert.Equal(["resume c1", "resume c2", "resume c3"], calls.TakeLast(3));
        Assert.All(new[] { "c1", "c2", "c3" }, id => Assert.Equal("running", _h.Runtimes.StatusOf(id)));
    }

    [Fact]
    public async Task A_pause_that_fails_midway_resumes_the_containers_already_paused()
    {
        var pod = await PodWithAsync("c1", "c2");
        _h.Runtimes.Failures["pause c2"] = new CrestException(ErrorKind.Internal, "runc pause failed");

        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.DumpPodAsync(pod.Id, Targets("c1", "c2"), false, _ => Task.CompletedTask, false, Ct));

        Assert.Equal("runc pause failed", e.Message);
        Assert.DoesNotContain(_h.Runtimes.Calls, c => c.StartsWith("checkpoint", StringComparison.Ordinal));
        Assert.Equal("running", _h.Runtimes.StatusOf("c1"));
    }

    [Fact]
    public async Task Cancelled_while_the_shared_state_is_captured_every_container_is_still_resumed()
    {
        var pod = await PodWithAsync("c1", "c2");
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(Ct);

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => _h.Containers.DumpPodAsync(pod.Id, Targets("c1", "c2"), false, async ct =>
        {
            await cancel.CancelAsync();
            ct.ThrowIfCancellationRequested();
        }, false, cancel.Token));

        Assert.Equal("running", _h.Runtimes.StatusOf("c1"));
        Assert.Equal("running", _h.Runtimes.StatusOf("c2"));
    }

    [Fact]
    public async Task Stopped_after_the_checkpoint_kills_every_container_while_still_frozen_then_thaws_them()
    {
        var pod = await PodWithAsync("c1", "c2");

        await _h.Containers.DumpPodAsync(pod.Id, Targets("c1", "c2"), false, _ => Task.CompletedTask, killAfterDump: true, Ct);

        AssertPhases(["pause c1", "pause c2"], ["checkpoint c1", "checkpoint c2"], ["kill c1", "kill c2", "resume c1", "resume c2"]);
    }

    [Fact]
    public async Task A_container_of_another_pod_or_not_running_is_refused_before_any_pause()
    {
        var pod = await PodWithAsync("c1");
        var other = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod("other"), Ct);
        await _h.RecordRunningAsync("c9", other.Id, Ct);
        await _h.Store.PutContainerAsync(RuntimeStoreConformance.Container("c2", pod.Id, ContainerState.Exited), Ct);

        var foreign = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.DumpPodAsync(pod.Id, Targets("c1", "c9"), false, _ => Task.CompletedTask, false, Ct));
        var exited = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.DumpPodAsync(pod.Id, Targets("c1", "c2"), false, _ => Task.CompletedTask, false, Ct));

        Assert.Equal(ErrorKind.InvalidArgument, foreign.Kind);
        Assert.Equal(ErrorKind.FailedPrecondition, exited.Kind);
        Assert.Contains("CONTAINER_EXITED", exited.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(_h.Runtimes.Calls, IsDumpStep);
    }

    [Fact]
    public void Pod_checkpoint_options_are_checked_and_unknown_keys_refused()
    {
        Assert.True(PodCheckpointService.ParseOptions(new Dictionary<string, string>(), tcpEstablishedDefault: true));
        Assert.False(PodCheckpointService.ParseOptions(new Dictionary<string, string> { ["tcp-established"] = "false" }, true));
        Assert.True(PodCheckpointService.ParseOptions(new Dictionary<string, string> { ["tcp-established"] = "true" }, false));
        var bad = Assert.Throws<CrestException>(() => PodCheckpointService.ParseOptions(new Dictionary<string, string> { ["tcp-established"] = "yes" }, false));
        var unknown = Assert.Throws<CrestException>(() => PodCheckpointService.ParseOptions(new Dictionary<string, string> { ["leave-running"] = "true" }, false));
        Assert.Equal(ErrorKind.InvalidArgument, bad.Kind);
        Assert.Equal(ErrorKind.InvalidArgument, unknown.Kind);
        Assert.Contains("leave-running", unknown.Message, StringComparison.Ordinal);
        Assert.Contains("tcp-established", unknown.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_output_must_be_a_new_or_empty_directory_and_never_a_link()
    {
        using var dir = new Crest.TestKit.TempDir();
        var fresh = dir.Combine("new");
        Assert.Equal(fresh, PodCheckpointService.PrepareOutput(fresh, out var created));
        Assert.True(created);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(fresh));
        Assert.Equal(fresh, PodCheckpointService.PrepareOutput(fresh + "/", out created));
        Assert.False(created);

        File.WriteAllText(Path.Combine(fresh, "x"), "");
        Assert.Contains("not empty", Assert.Throws<CrestException>(() => PodCheckpointService.PrepareOutput(fresh, out _)).Message, StringComparison.Ordinal);
        File.CreateSymbolicLink(dir.Combine("link"), fresh);
        Assert.Contains("symbolic link", Assert.Throws<CrestException>(() => PodCheckpointService.PrepareOutput(dir.Combine("link"), out _)).Message, StringComparison.Ordinal);
        Assert.Contains("absolute", Assert.Throws<CrestException>(() => PodCheckpointService.PrepareOutput("relative/dir", out _)).Message, StringComparison.Ordinal);
        Assert.Contains("does not exist", Assert.Throws<CrestException>(() => PodCheckpointService.PrepareOutput(dir.Combine("no", "such"), out _)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Restore_configs_are_matched_to_the_checkpointed_containers_by_name()
    {
        var manifest = new PodCheckpointManifest
        {
            CheckpointedAt = DateTimeOffset.UnixEpoch,
            SandboxId = "s1",
            Pod = RuntimeHarness.Pod(),
            Containers = [Part("app"), Part("sidecar")],
        };

        var pairs = PodRestoreService.Match(manifest, [RuntimeHarness.Container("sidecar"), RuntimeHarness.Container("app")], "/ckpt");
        Assert.Equal(["sidecar", "app"], pairs.Select(p => p.Part.Name));

        var missing = Assert.Throws<CrestException>(() => PodRestoreService.Match(manifest, [RuntimeHarness.Container("app")], "/ckpt"));
        Assert.Contains("sidecar", missing.Message, StringComparison.Ordinal);
        var stranger = Assert.Throws<CrestException>(() => PodRestoreService.Match(manifest, [RuntimeHarness.Container("app"), RuntimeHarness.Container("db")], "/ckpt"));
        Assert.Contains("\"db\"", stranger.Message, StringComparison.Ordinal);
        var twice = Assert.Throws<CrestException>(() => PodRestoreService.Match(manifest, [RuntimeHarness.Container("app"), RuntimeHarness.Container("app")], "/ckpt"));
        Assert.Contains("twice", twice.Message, StringComparison.Ordinal);
        Assert.Throws<CrestException>(() => PodRestoreService.Match(manifest, [], "/ckpt"));

        static PodCheckpointContainer Part(string name) => new() { Name = name, Id = name + "-id", Spec = RuntimeHarness.Container(name) };
    }

    public void Dispose() => _h.Dispose();
}
