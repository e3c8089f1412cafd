using Crest.Checkpoint;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

// A whole-pod migration's source: the freeze writes CRIU's images and nothing more; the container archives are made as
// the pod checkpoint streams, in the form a target's RestorePod reads.
public sealed partial class MigrationServiceTests
{
    /// <summary>A ready pod with running containers <paramref name="ids"/>, whose checkpoints write an inventory.img naming the container.</summary>
    private async Task<SandboxRecord> PodOfRunningAsync(params string[] ids)
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        foreach (var id in ids)
        {
            await RunningWithConfigAsync(id, pod.Id);
        }

        _h.Runtimes.DuringCheckpoint = o => File.WriteAllText(Path.Combine(o.ImagePath, "inventory.img"), "images of " + o.ContainerId);
        return pod;
    }

    /// <summary>Every container archive, finished or partial, under the node's root: a pod freeze is to leave none.</summary>
    private List<string> ContainerArchivesUnderRoot() =>
        [.. Directory.EnumerateFiles(_h.Paths.Root, "*", SearchOption.AllDirectories).Where(f =>
            Path.GetFileName(Path.GetDirectoryName(f)) == PodCheckpointFiles.ContainersDir || f.EndsWith(Crest.Runtime.ContainerService.PartialArchiveSuffix, StringComparison.Ordinal))];

    [Fact]
    public async Task A_post_copy_pod_freeze_gives_each_container_a_page_server_of_its_own_over_tls_recorded_in_its_hold_and_a_resume_ends_it()
    {
        var pod = await PodOfRunningAsync("c1", "c2");
        var service = Service(new RestoreOptions { ViaCreate = true });
        var configs = new System.Collections.Concurrent.ConcurrentDictionary<string, string>();
        _h.Runtimes.DuringCheckpoint = o =>
        {
            configs[o.ContainerId] = File.ReadAllText(_h.Layout.Container(o.ContainerId).CriuConfig);
            File.WriteAllText(Path.Combine(o.ImagePath, "inventory.img"), "images of " + o.ContainerId);
        };
        var certificates = new Dictionary<string, string> { ["c1"] = TargetCertificate(), ["c2"] = TargetCertificate() };

        var frozen = await service.FreezePodAsync(pod.Id, TimeSpan.Zero, Ct, pageServerAddress: "127.0.0.1", pageClientCertificates: certificates);

        // One page server per container, each on a port of its own, each dumped lazily with a key pair of its own pinning its client.
        Assert.Equal(["c1", "c2"], frozen.PageServers.Keys.Order(StringComparer.Ordinal));
        Assert.NotEqual(frozen.PageServers["c1"].Endpoint, frozen.PageServers["c2"].Endpoint);
        Assert.Equal(2, _h.Runtimes.Checkpointed.Count);
        Assert.All(_h.Runtimes.Checkpointed, o => Assert.Equal(frozen.PageServers[o.ContainerId].Endpoint, o.LazyPageServer));
        var dirs = Directory.EnumerateDirectories(_identities.Root).ToList();
        Assert.Equal(2, dirs.Count);
        foreach (var (id, server) in frozen.PageServers)
        {
            var dir = dirs.Single(d => File.ReadAllText(Path.Combine(d, "cert.pem")).Trim() == server.Certificate!.Trim());
            Assert.Contains($"tls-cacert {dir}/peer.pem", configs[id], StringComparison.Ordinal);
            Assert.Equal(certificates[id].Trim(), File.ReadAllText(Path.Combine(dir, "peer.pem")).Trim());
            // A restarted crestd finds the page server through the hold and kills it before any thaw.
            Assert.True((await _h.Store.GetContainerAsync(id, Ct))!.MigrationHold!.PageServerPid > 0);
        }

        Assert.Equal("paused", _h.Runtimes.StatusOf("c1"));
        await service.ResumeAsync("c1", Ct);
        await service.ResumeAsync("c2", Ct);
        foreach (var dir in dirs)
        {
            await WaitGoneAsync(dir);
        }

        Assert.Equal("running", _h.Runtimes.StatusOf("c1"));
        Assert.Equal("running", _h.Runtimes.StatusOf("c2"));
        service.DropArchive(frozen.ArchiveToken);
    }

    [Fact]
    public async Task A_post_copy_pod_checkpoint_refuses_a_container_without_a_page_server_before_any_pause()
    {
        var pod = await PodOfRunningAsync("c1", "c2");
        var checkpoints = new PodCheckpointService(_h.Containers, _h.Sandboxes, _h.Pods, _h.Layout, new Criu(), _h.Linux, new PodOperationJournal(_h.Paths), new CheckpointOptions(),
            TimeProvider.System, Microsoft.Extensions.Logging.Abstractions.NullLogger<PodCheckpointService>.Instance);

        // c2 started after the freeze was prepared: only c1 has a page server.
        var e = await Assert.ThrowsAsync<CrestException>(() => checkpoints.CheckpointAsync(new PodCheckpointRequest
        {
            SandboxId = pod.Id,
            OutputPath = Path.Combine(_h.Paths.Root, "pod-out"),
            HoldFrozen = true,
            PageServers = new Dictionary<string, LazyDumpTarget> { ["c1"] = new("127.0.0.1:7001", null) },
        }, Ct));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains("container c2 of pod sandbox", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(_h.Runtimes.Calls, c => c.StartsWith("pause", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_post_copy_pod_freeze_over_tls_needs_a_certificate_for_every_container_and_refuses_before_any_pause()
    {
        var pod = await PodOfRunningAsync("c1", "c2");
        var service = Service(new RestoreOptions { ViaCreate = true });

        var missing = await Assert.ThrowsAsync<CrestException>(() => service.FreezePodAsync(pod.Id, TimeSpan.Zero, Ct, pageServerAddress: "127.0.0.1",
            pageClientCertificates: new Dictionary<string, string> { ["c1"] = TargetCertificate() }));
        var stray = await Assert.ThrowsAsync<CrestException>(() => service.FreezePodAsync(pod.Id, TimeSpan.Zero, Ct, pageServerAddress: "127.0.0.1",
            pageClientCertificates: new Dictionary<string, string> { ["c1"] = TargetCertificate(), ["c2"] = TargetCertificate(), ["x9"] = TargetCertificate() }));
        var noAddress = await Assert.ThrowsAsync<CrestException>(() => service.FreezePodAsync(pod.Id, TimeSpan.Zero, Ct,
            pageClientCertificates: new Dictionary<string, string> { ["c1"] = TargetCertificate() }));

        Assert.Contains("container c2 of pod sandbox", missing.Message, StringComparison.Ordinal);
        Assert.Equal(ErrorKind.FailedPrecondition, stray.Kind);
        Assert.Contains("container x9, which is not a running container", stray.Message, StringComparison.Ordinal);
        Assert.Equal(ErrorKind.InvalidArgument, noAddress.Kind);
        Assert.DoesNotContain(_h.Runtimes.Calls, c => c.StartsWith("pause", StringComparison.Ordinal));
        Assert.True(!Directory.Exists(_identities.Root) || !Directory.EnumerateFileSystemEntries(_identities.Root).Any());
    }

    [Fact]
    public async Task A_pod_freeze_writes_no_container_archive_and_its_stream_is_a_pod_checkpoint_tar_holding_each_containers_archive()
    {
        var pod = await PodOfRunningAsync("c1", "c2");
        var service = Service(new RestoreOptions { ViaCreate = true });

        var frozen = await service.FreezePodAsync(pod.Id, TimeSpan.Zero, Ct);

        // While the pod is frozen only CRIU's images and the rootfs diffs were written; no archive was built.
        Assert.Equal("paused", _h.Runtimes.StatusOf("c1"));
        Assert.Equal("paused", _h.Runtimes.StatusOf("c2"));
        Assert.Empty(ContainerArchivesUnderRoot());

        var sent = Path.Combine(_h.Paths.Root, "sent-pod.tar");
        await using (var file = File.Create(sent))
        {
            await service.SendArchiveAsync(frozen.ArchiveToken, file, Ct);
        }

        // The target's RestorePod opens it as any pod checkpoint tar, and each container part as any checkpoint archive.
        var limits = new RestoreOptions().Limits;
        using (var opened = await PodCheckpointSources.OpenArchiveAsync(sent, _h.Paths.Restores, limits, Ct))
        {
            var manifest = await PodCheckpointManifests.ReadAsync(opened.Directory, 1 << 20, Ct);
            Assert.Equal(["c-c1", "c-c2"], manifest.Containers.Select(c => c.Name).Order(StringComparer.Ordinal));
            foreach (var c in manifest.Containers)
            {
                var archive = Path.Combine(opened.Directory, PodCheckpointFiles.ContainerArchive(c.Name));
                Assert.Equal(c.ArchiveBytes, new FileInfo(archive).Length);
                var unpacked = Directory.CreateDirectory(Path.Combine(_h.Paths.Root, "unpacked-" + c.Name)).FullName;
                await using (var input = File.OpenRead(archive))
                {
                    await new CheckpointReader(limits).UnpackAsync(input, unpacked, archive, Ct);
                }

                Assert.Equal("images of " + c.Id, await File.ReadAllTextAsync(Path.Combine(unpacked, CheckpointFiles.CriuImages, "inventory.img"), Ct));
                Assert.True(File.Exists(Path.Combine(unpacked, CheckpointFiles.ConfigDump)));
                Assert.True(File.Exists(Path.Combine(unpacked, CheckpointFiles.RootfsDiff)));
            }
        }

        service.DropArchive(frozen.ArchiveToken);

        Assert.Empty(Directory.EnumerateFileSystemEntries(service.ArchiveDir));
        Assert.Empty(Directory.EnumerateDirectories(_h.Layout.ContainerDir("c1"), "checkpoint-work-*"));
        Assert.Empty(Directory.EnumerateDirectories(_h.Layout.ContainerDir("c2"), "checkpoint-work-*"));
        await Assert.ThrowsAsync<CrestException>(() => service.SendArchiveAsync(frozen.ArchiveToken, Stream.Null, Ct));
    }

    [Fact]
    public async Task Resuming_a_container_of_a_frozen_pod_drops_the_pod_checkpoint_and_the_work_it_held()
    {
        var pod = await PodOfRunningAsync("c1", "c2");
        var service = Service(new RestoreOptions { ViaCreate = true });
        await service.FreezePodAsync(pod.Id, TimeSpan.Zero, Ct);

        await service.ResumeAsync("c1", Ct);

        Assert.Equal("running", _h.Runtimes.StatusOf("c1"));
        Assert.Empty(Directory.EnumerateFileSystemEntries(service.ArchiveDir));
        Assert.Empty(Directory.EnumerateDirectories(_h.Layout.ContainerDir("c1"), "checkpoint-work-*"));
        Assert.Empty(Directory.EnumerateDirectories(_h.Layout.ContainerDir("c2"), "checkpoint-work-*"));
    }

    [Fact]
    public async Task A_pod_freeze_that_fails_resumes_every_container_and_holds_nothing()
    {
        var pod = await PodOfRunningAsync("c1", "c2");
        // c2's CRIU writes no images: the checkpoint fails after the dump left the pod frozen.
        _h.Runtimes.DuringCheckpoint = o =>
        {
            if (o.ContainerId == "c1")
            {
                File.WriteAllText(Path.Combine(o.ImagePath, "inventory.img"), "images");
            }
        };
        var service = Service(new RestoreOptions { ViaCreate = true });

        var e = await Assert.ThrowsAsync<CrestException>(() => service.FreezePodAsync(pod.Id, TimeSpan.Zero, Ct));

        Assert.Contains("inventory.img", e.Message, StringComparison.Ordinal);
        Assert.Equal("running", _h.Runtimes.StatusOf("c1"));
        Assert.Equal("running", _h.Runtimes.StatusOf("c2"));
        Assert.Empty(Directory.EnumerateFileSystemEntries(service.ArchiveDir));
        Assert.Empty(Directory.EnumerateDirectories(_h.Layout.ContainerDir("c1"), "checkpoint-work-*"));
        Assert.Empty(Directory.EnumerateDirectories(_h.Layout.ContainerDir("c2"), "checkpoint-work-*"));
    }

    [Fact]
    public async Task A_pod_freeze_after_rootfs_rounds_makes_that_containers_checkpoint_a_delta_naming_its_rounds_and_spends_them()
    {
        var pod = await PodOfRunningAsync("c1", "c2");
        await File.WriteAllTextAsync(Path.Combine(_h.Layout.Container("c1").Upper, "data"), "round one", Ct);
        // (An empty upper directory makes a 0-byte rootfs diff, which the checkpoint reader refuses.)
        await File.WriteAllTextAsync(Path.Combine(_h.Layout.Container("c2").Upper, "data"), "no rounds", Ct);
        var service = Service(new RestoreOptions { ViaCreate = true });
        var round = await service.PrepareRootfsRoundAsync("c1", null, Ct);
        service.DropArchive(round.ArchiveToken);
        await File.WriteAllTextAsync(Path.Combine(_h.Layout.Container("c1").Upper, "later"), "after the round", Ct);

        var frozen = await service.FreezePodAsync(pod.Id, TimeSpan.Zero, Ct, new Dictionary<string, string> { ["c1"] = round.RoundsToken });

        var sent = Path.Combine(_h.Paths.Root, "sent-pod.tar");
        await using (var file = File.Create(sent))
        {
            await service.SendArchiveAsync(frozen.ArchiveToken, file, Ct);
        }

        var limits = new RestoreOptions().Limits;
        using (var opened = await PodCheckpointSources.OpenArchiveAsync(sent, _h.Paths.Restores, limits, Ct))
        {
            var plans = new Dictionary<string, RestorePlan>(StringComparer.Ordinal);
            foreach (var name in new[] { "c-c1", "c-c2" })
            {
                var staging = Directory.CreateDirectory(Path.Combine(_h.Paths.Root, "plan-" + name)).FullName;
                plans[name] = await new CheckpointReader(limits).ReadArchiveAsync(Path.Combine(opened.Directory, PodCheckpointFiles.ContainerArchive(name)), staging, Ct);
            }

            // c1's checkpoint sits on the round the target staged; c2, named by no rounds, carries its whole rootfs diff.
            Assert.Single(plans["c-c1"].StagedRootfsRounds!);
            Assert.Null(plans["c-c2"].StagedRootfsRounds);
        }

        // Spent by the freeze: the rounds cannot be continued or named again.
        Assert.Equal(ErrorKind.NotFound, (await Assert.ThrowsAsync<CrestException>(() => service.PrepareRootfsRoundAsync("c1", round.RoundsToken, Ct))).Kind);
        service.DropArchive(frozen.ArchiveToken);
    }

    [Fact]
    public async Task A_pod_freeze_naming_rounds_of_a_container_outside_the_pod_or_unknown_rounds_is_refused_before_any_pause()
    {
        var pod = await PodOfRunningAsync("c1");
        var other = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod("other"), Ct);
        await RunningWithConfigAsync("x1", other.Id);
        var service = Service(new RestoreOptions { ViaCreate = true });
        var round = await service.PrepareRootfsRoundAsync("x1", null, Ct);
        service.DropArchive(round.ArchiveToken);

        var stray = await Assert.ThrowsAsync<CrestException>(() => service.FreezePodAsync(pod.Id, TimeSpan.Zero, Ct, new Dictionary<string, string> { ["x1"] = round.RoundsToken }));
        var unknown = await Assert.ThrowsAsync<CrestException>(() => service.FreezePodAsync(pod.Id, TimeSpan.Zero, Ct, new Dictionary<string, string> { ["c1"] = new string('f', 24) }));

        Assert.Equal(ErrorKind.InvalidArgument, stray.Kind);
        Assert.Equal(ErrorKind.NotFound, unknown.Kind);
        Assert.DoesNotContain(_h.Runtimes.Calls, c => c.StartsWith("pause", StringComparison.Ordinal));
        Assert.Empty(Directory.EnumerateFileSystemEntries(service.ArchiveDir));
    }

    [Fact]
    public async Task A_pod_freeze_that_moves_tcp_connections_locks_the_pod_network_before_the_dumps_and_any_containers_resume_lifts_it()
    {
        var pod = await PodOfRunningAsync("c1", "c2");
        var service = Service(new RestoreOptions { ViaCreate = true });
        var lockedAtDump = new List<bool>();
        var write = _h.Runtimes.DuringCheckpoint!;
        _h.Runtimes.DuringCheckpoint = o =>
        {
            lockedAtDump.Add(_commands.Active.Any(r => r.Contains(MigrationLockRule.Comment, StringComparison.Ordinal)));
            write(o);
        };

        var frozen = await service.FreezePodAsync(pod.Id, TimeSpan.Zero, Ct, tcpEstablished: true);

        // The lock the container freeze refuses while another container runs is the whole pod's here: all of them freeze.
        var netns = (await _h.Sandboxes.GetAsync(pod.Id, Ct)).NetnsPath!;
        Assert.Contains($"nsenter --net={netns} iptables -w -I INPUT -p tcp -m comment --comment {MigrationLockRule.Comment} -j DROP", _commands.Lines);
        Assert.Contains($"nsenter --net={netns} iptables -w -I OUTPUT -p tcp -m comment --comment {MigrationLockRule.Comment} -j DROP", _commands.Lines);
        Assert.Equal([true, true], lockedAtDump);
        Assert.All(_h.Runtimes.Checkpointed, c => Assert.True(c.TcpEstablished));
        Assert.Equal(["c1", "c2"], frozen.ContainerIds.Order(StringComparer.Ordinal));

        // At a crestd start the lock stays while the containers are held frozen for the migration.
        var sweep = new MigrationNetworkLock(_commands, _h.Sandboxes, _h.Containers, _h.Layout, Microsoft.Extensions.Logging.Abstractions.NullLogger<MigrationNetworkLock>.Instance);
        Assert.Equal(0, await sweep.SweepAsync(Ct));
        Assert.Contains(_commands.Active, r => r.Contains(MigrationLockRule.Comment, StringComparison.Ordinal));

        // A second migration of the held pod is refused before it touches the lock (its undo would lift this one's).
        var again = await Assert.ThrowsAsync<CrestException>(() => service.FreezePodAsync(pod.Id, TimeSpan.Zero, Ct, tcpEstablished: true));
        Assert.Equal(ErrorKind.FailedPrecondition, again.Kind);
        Assert.Contains("locked for another migration", again.Message, StringComparison.Ordinal);
        Assert.Contains(_commands.Active, r => r.Contains(MigrationLockRule.Comment, StringComparison.Ordinal));

        // The undo resumes each container; whichever comes first lifts the pod's lock.
        await service.ResumeAsync("c2", Ct);
        Assert.DoesNotContain(_commands.Active, r => r.Contains(MigrationLockRule.Comment, StringComparison.Ordinal));
        await service.ResumeAsync("c1", Ct);
        Assert.Equal("running", _h.Runtimes.StatusOf("c1"));
        Assert.Equal("running", _h.Runtimes.StatusOf("c2"));
    }

    [Fact]
    public async Task A_pod_freeze_that_moves_tcp_connections_and_fails_lifts_the_lock_and_every_container_runs_on()
    {
        var pod = await PodOfRunningAsync("c1", "c2");
        var service = Service(new RestoreOptions { ViaCreate = true });
        _h.Runtimes.Failures["checkpoint c2"] = new CrestException(ErrorKind.Internal, "container c2: runc checkpoint failed: criu failed");

        await Assert.ThrowsAsync<CrestException>(() => service.FreezePodAsync(pod.Id, TimeSpan.Zero, Ct, tcpEstablished: true));

        Assert.Contains(_commands.Lines, l => l.Contains(" -I INPUT ", StringComparison.Ordinal));
        Assert.DoesNotContain(_commands.Active, r => r.Contains(MigrationLockRule.Comment, StringComparison.Ordinal));
        Assert.Equal("running", _h.Runtimes.StatusOf("c1"));
        Assert.Equal("running", _h.Runtimes.StatusOf("c2"));
    }
}
