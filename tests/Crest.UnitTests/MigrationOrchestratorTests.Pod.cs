using Crest.Cli;
using Crest.Cli.Migration;

namespace Crest.UnitTests;

/// <summary>
/// A whole pod's migration over fake nodes: every container moves or none does. Whatever step fails, the target's pod
/// goes and every source container runs again; after the switch the source containers are killed, never resumed.
/// </summary>
public sealed partial class MigrationOrchestratorTests
{
    private sealed partial class FakeNode
    {
        /// <summary>The pod each container belongs to (containers a pod removal takes along).</summary>
        public Dictionary<string, string> PodOf { get; } = new(StringComparer.Ordinal);

        /// <summary>The migration label of each pod restored here.</summary>
        public Dictionary<string, string> PodMigrationIds { get; } = new(StringComparer.Ordinal);

        public Task<SourcePod> InspectPodAsync(string podId, CancellationToken ct)
        {
            Step("inspectpod " + podId);
            var ids = PodOf.Where(kv => kv.Value == podId).Select(kv => kv.Key).Order(StringComparer.Ordinal);
            return Task.FromResult(new SourcePod(podId, [.. ids.Select(id => new SourceContainer(id, "name-" + id, podId, "registry/busybox:v1", "registry/busybox@sha256:aa", id + ".log", true,
                new Dictionary<string, string>(), new Dictionary<string, string>(), []))]));
        }

        /// <summary>The staged rootfs rounds each restored container claimed, by container name.</summary>
        public Dictionary<string, string> PodRestoredWithStaging { get; } = new(StringComparer.Ordinal);

        /// <summary>Where each container of the last RestorePod was to fetch its memory, by container name.</summary>
        public IReadOnlyDictionary<string, LazyPagesSource> PodLazyPages { get; private set; } = new Dictionary<string, LazyPagesSource>();

        /// <summary>A source that predates FreezePod's tcp_established: it ignores the request and answers false.</summary>
        public bool IgnoresTcpEstablished { get; set; }

        /// <summary>The page client certificates the last pod freeze was given, by container id.</summary>
        public IReadOnlyDictionary<string, string> PodPageClientCertificates { get; private set; } = new Dictionary<string, string>();

        /// <summary>A source that predates post-copy pod freezes: it ignores the page server address and answers no page server.</summary>
        public bool IgnoresPodPageServers { get; set; }

        public Task<FrozenPod> FreezePodAsync(string podId, long timeoutSeconds, IReadOnlyDictionary<string, string> rootfsRounds, bool tcpEstablished, string? pageServerAddress,
            IReadOnlyDictionary<string, string> pageClientCertificates, CancellationToken ct)
        {
            Step("freezepod " + podId + (tcpEstablished ? " tcp-established" : "") + (rootfsRounds.Count == 0 ? "" : " after " + string.Join(",", rootfsRounds.OrderBy(r => r.Key, StringComparer.Ordinal).Select(r => $"{r.Key}={r.Value}")))
                + (pageServerAddress is null ? "" : " page-servers-on " + pageServerAddress));
            PodPageClientCertificates = pageClientCertificates;
            foreach (var token in rootfsRounds.Values)
            {
                RootfsRounds.Remove(token);
            }

            var ids = PodOf.Where(kv => kv.Value == podId).Select(kv => kv.Key).Order(StringComparer.Ordinal).ToList();
            foreach (var id in ids)
            {
                Containers[id] = "frozen";
            }

            Archives.Add("src-pod");
            AnswerLost("freezepod");
            var port = 7000;
            return Task.FromResult(new FrozenPod("src-pod", ids, TimeSpan.FromMilliseconds(300), 8192)
            {
                RootfsBytes = rootfsRounds.Count == 0 ? 16L << 20 : 1024,
                TcpEstablished = tcpEstablished && !IgnoresTcpEstablished,
                PageServers = pageServerAddress is null || IgnoresPodPageServers
                    ? new Dictionary<string, SourcePageServer>()
                    : ids.ToDictionary(id => id, id => new SourcePageServer($"{pageServerAddress}:{port++}", pageClientCertificates.ContainsKey(id) ? "cert-" + id : null), StringComparer.Ordinal),
            });
        }

        public Task<RestoredPod> RestorePodAsync(string checkpointPath, global::Runtime.V1.PodSandboxConfig config, IReadOnlyList<SourceContainer> containers,
            IReadOnlyDictionary<string, string> rootfsStaging, IReadOnlyList<string> expectedIps, IReadOnlyDictionary<string, LazyPagesSource> lazyPages, CancellationToken ct)
        {
            Step("restorepod " + checkpointPath);
            PodLazyPages = lazyPages;
            foreach (var (name, staging) in rootfsStaging)
            {
                // Claimed by the restore, success or not.
                RootfsRounds.Remove(staging);
                PodRestoredWithStaging[name] = staging;
            }

            var pod = $"pod-{Name}-{++_next}";
            Pods.Add(pod);
            PodConfigs[pod] = config;
            PodMigrationIds[pod] = config.Labels[MigrationLabels.MigrationId];
            var asked = config.Annotations.GetValueOrDefault(Crest.Core.PodAnnotations.NetworkIps);
            var got = NetworkHonoursIps && asked is not null ? asked : NetworkGives;
            if (expectedIps.Count > 0 && !expectedIps.All(ip => ip == got))
            {
                // As the real node: checked before any start, and the pod it made goes.
                Pods.Remove(pod);
                throw new CliFailure(ExitCodes.RuntimeError, $"--keep-address: pod {pod} got the address {got}, not {string.Join(",", expectedIps)}, so none of its containers was started; its CNI network must honour the ips capability");
            }

            var restored = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var c in containers)
            {
                var id = "restored-" + ++_next;
                Containers[id] = FailAt == "state" ? "exited" : "running";
                PodOf[id] = pod;
                MigrationIds[id] = c.Labels[MigrationLabels.MigrationId];
                restored[c.Name] = id;
            }

            AnswerLost("restorepod");
            return Task.FromResult(new RestoredPod(pod, restored));
        }

        public Task<IReadOnlyList<string>> FindRestoredPodsAsync(string migrationId, CancellationToken ct)
        {
            Step("findpods " + migrationId);
            return Task.FromResult<IReadOnlyList<string>>([.. PodMigrationIds.Where(m => m.Value == migrationId && Pods.Contains(m.Key)).Select(m => m.Key)]);
        }
    }

    private static (FakeNode Source, FakeNode Target, MigrationOrchestrator Orchestrator, List<string> Progress) PodNodes()
    {
        var (source, target, orchestrator, progress) = Nodes();
        source.Containers.Clear();
        source.Pods.Add("pod-a");
        foreach (var id in new[] { "c1", "c2" })
        {
            source.Containers[id] = "running";
            source.PodOf[id] = "pod-a";
        }

        return (source, target, orchestrator, progress);
    }

    private static PodMigrationRequest MovePod(MigrationStrategy strategy = MigrationStrategy.StopCopy, bool rootfsRounds = true) =>
        new("pod-a", strategy, new global::Runtime.V1.PodSandboxConfig()) { RootfsRounds = rootfsRounds };

    /// <summary>Pod nodes that both support post-copy.</summary>
    private static (FakeNode Source, FakeNode Target, MigrationOrchestrator Orchestrator, List<string> Progress) PostCopyPodNodes()
    {
        var nodes = PodNodes();
        nodes.Source.Problems["post-copy"] = null;
        nodes.Target.Problems["post-copy"] = null;
        return nodes;
    }

    [Fact]
    public void The_pod_freeze_is_a_new_rpc_with_new_messages_whose_field_numbers_are_pinned()
    {
        Assert.Equal(1, Crest.Api.V1.FreezePodRequest.PodSandboxIdFieldNumber);
        Assert.Equal(2, Crest.Api.V1.FreezePodRequest.TimeoutFieldNumber);
        Assert.Equal(1, Crest.Api.V1.FreezePodResponse.ArchiveTokenFieldNumber);
        Assert.Equal(2, Crest.Api.V1.FreezePodResponse.ContainerIdsFieldNumber);
        Assert.Equal(3, Crest.Api.V1.FreezePodResponse.PausedMsFieldNumber);
        Assert.Equal(4, Crest.Api.V1.FreezePodResponse.CheckpointBytesFieldNumber);
        Assert.Equal(3, Crest.Api.V1.FreezePodRequest.RootfsRoundsTokensFieldNumber);
        Assert.Equal(5, Crest.Api.V1.FreezePodResponse.RootfsEntriesFieldNumber);
        Assert.Equal(6, Crest.Api.V1.FreezePodResponse.RootfsBytesFieldNumber);
        Assert.Equal(4, Crest.Api.V1.FreezePodRequest.TcpEstablishedFieldNumber);
        Assert.Equal(7, Crest.Api.V1.FreezePodResponse.TcpEstablishedFieldNumber);
        Assert.Equal(5, Crest.Api.V1.FreezePodRequest.PageServerAddressFieldNumber);
        Assert.Equal(6, Crest.Api.V1.FreezePodRequest.PageClientCertificatesFieldNumber);
        Assert.Equal(8, Crest.Api.V1.FreezePodResponse.PageServersFieldNumber);
        Assert.Equal(1, Crest.Api.V1.PodPageServer.PageServerFieldNumber);
        Assert.Equal(2, Crest.Api.V1.PodPageServer.CertificateFieldNumber);
    }

    [Fact]
    public async Task A_pod_migration_freezes_every_container_copies_restores_the_pod_and_only_then_removes_the_source_pod()
    {
        var (source, target, orchestrator, _) = PodNodes();

        var report = await orchestrator.RunPodAsync(MovePod(rootfsRounds: false), Ct);

        Assert.Equal(["inspectpod pod-a", "freezepod pod-a", "read src-pod", "read-rest src-pod", "killfrozen c1", "killfrozen c2",
            "logtimes c1", "rm c1", "logtimes c2", "rm c2", "rmp pod-a", "drop src-pod"], source.Calls);
        // One pull for the base image both containers share, before the freeze; the pod checkpoint is stored whole (RestorePod reads the tar).
        Assert.Equal(["pull registry/busybox@sha256:aa", "write", "restorepod /target/migrations/dst-archive.tar"], target.Calls.Take(3));
        Assert.Empty(target.PodRestoredWithStaging);
        Assert.Equal(16L << 20, report.FrozenRootfsBytes);
        Assert.False(target.AskedToUnpack);
        Assert.Empty(source.Containers);
        Assert.Empty(source.Pods);
        Assert.Equal([report.TargetPodId], target.Pods);
        Assert.Equal(2, target.Running.Count());
        Assert.Equal(["name-c1", "name-c2"], report.Containers.Select(c => c.Name));
        Assert.All(report.Containers, c => Assert.Equal("running", target.Containers[c.TargetContainerId]));
        Assert.Empty(source.Archives);
        Assert.Empty(target.Archives);
        Assert.Equal(1000, report.BytesBeforeSwitch);
        Assert.Equal(4096, report.BytesDuringSwitch);
        Assert.Equal(TimeSpan.FromMilliseconds(800), report.Downtime);
        // The restored pod and its containers carry the migration's label, which the undo finds them by.
        Assert.Single(target.PodMigrationIds.Values.Distinct());
        Assert.Equal(target.PodMigrationIds.Values.Single(), target.MigrationIds[report.Containers[0].TargetContainerId]);
    }

    [Fact]
    public async Task Each_containers_rootfs_moves_in_rounds_before_the_pod_freeze_and_each_restore_claims_its_own_staged_rounds()
    {
        var (source, target, orchestrator, progress) = PodNodes();

        var report = await orchestrator.RunPodAsync(MovePod(), Ct);

        // c1 sends two rounds (the second is small), c2 one; the freeze names each container's rounds.
        Assert.Equal(["inspectpod pod-a",
            "round new", "readround round-1", "readround-rest round-1", "drop round-1", "round rounds-a", "readround round-2", "readround-rest round-2", "drop round-2",
            "round new", "readround round-3", "readround-rest round-3", "drop round-3",
            "freezepod pod-a after c1=rounds-a,c2=rounds-a2", "read src-pod"], source.Calls.Take(15));
        Assert.Equal(["pull registry/busybox@sha256:aa", "stage new", "stage staging-b", "stage new", "write", "restorepod /target/migrations/dst-archive.tar"], target.Calls.Take(6));
        Assert.Equal(new Dictionary<string, string> { ["name-c1"] = "staging-b", ["name-c2"] = "staging-b2" }, target.PodRestoredWithStaging);
        Assert.Equal([2, 1], report.Containers.Select(c => c.RootfsRounds.Count));
        Assert.Equal(1000 + (8L << 20) + (64L << 10) + (64L << 10), report.BytesBeforeSwitch);
        Assert.Equal(1024, report.FrozenRootfsBytes);
        Assert.Empty(source.RootfsRounds);
        Assert.Empty(target.RootfsRounds);
        Assert.Contains(progress, p => p.Contains("rootfs in the frozen window: 0 entries, 1024 bytes (the rest came in 3 rounds before it)", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("source", "round")]
    [InlineData("source", "readround-rest")]
    [InlineData("target", "stage")]
    [InlineData("source", "freezepod")]
    [InlineData("source", "read")]
    [InlineData("source", "read-rest")]
    [InlineData("target", "write")]
    [InlineData("target", "restorepod")]
    [InlineData("target", "state")]
    public async Task A_pod_migration_failing_at_any_step_leaves_every_source_container_running_and_nothing_on_the_target(string node, string step)
    {
        var (source, target, orchestrator, _) = PodNodes();
        (node == "source" ? source : target).FailAt = step;

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunPodAsync(MovePod(), Ct));

        Assert.Equal(["c1", "c2"], source.Running.Order(StringComparer.Ordinal));
        Assert.Equal(["pod-a"], source.Pods);
        Assert.Empty(target.Containers);
        Assert.Empty(target.Pods);
        Assert.Empty(target.Archives);
        Assert.Empty(source.Archives);
        Assert.Contains("undone: the pod runs on a as before", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(source.Calls, c => c.StartsWith("killfrozen", StringComparison.Ordinal));
        // Every container's rootfs rounds go too: nothing staged is left on the target, and the source forgot what it sent.
        Assert.Empty(target.RootfsRounds);
        Assert.Empty(source.RootfsRounds);
    }

    [Fact]
    public async Task A_pre_copy_pod_migration_is_refused_with_the_reason_before_anything_happens()
    {
        var (source, target, orchestrator, _) = PodNodes();

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunPodAsync(MovePod(MigrationStrategy.PreCopy), Ct));

        Assert.StartsWith("--strategy pre-copy is refused by a: Dirty tracking is OFF", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(source.Calls, c => c.StartsWith("freezepod", StringComparison.Ordinal));
        Assert.DoesNotContain(target.Calls, c => c.StartsWith("restorepod", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_post_copy_pod_migration_serves_each_containers_memory_from_its_own_page_server_and_ends_the_source_only_once_every_page_arrived()
    {
        var (source, target, orchestrator, progress) = PostCopyPodNodes();
        var timeline = new List<string>();
        source.Timeline = timeline;
        target.Timeline = timeline;

        var report = await orchestrator.RunPodAsync(MovePod(MigrationStrategy.PostCopy) with { PageServerAddress = "10.0.0.1" }, Ct);

        // One key pair per container, made on the target before the freeze; each certificate reaches its container's page server only.
        Assert.Equal(2, target.Calls.Count(c => c == "prepare-page-client"));
        Assert.Equal(["c1", "c2"], source.PodPageClientCertificates.Keys.Order(StringComparer.Ordinal));
        Assert.NotEqual(source.PodPageClientCertificates["c1"], source.PodPageClientCertificates["c2"]);
        Assert.Contains(source.Calls, c => c.StartsWith("freezepod pod-a", StringComparison.Ordinal) && c.EndsWith(" page-servers-on 10.0.0.1", StringComparison.Ordinal));
        // Each restored container fetches from its own source's page server, pinning that server's certificate with its own key.
        Assert.Equal(new LazyPagesSource("10.0.0.1:7000", "cert-c1", "page-client-key"), target.PodLazyPages["name-c1"]);
        Assert.Equal(new LazyPagesSource("10.0.0.1:7001", "cert-c2", "page-client-key-2"), target.PodLazyPages["name-c2"]);
        // The sources are killed only after every restored container's transfer ended (the fake ends the first after two polls).
        var lastPages = timeline.FindLastIndex(c => c.StartsWith("b: pages ", StringComparison.Ordinal));
        Assert.True(lastPages > timeline.IndexOf("b: restorepod /target/migrations/dst-archive.tar"), string.Join("\n", timeline));
        Assert.True(timeline.FindIndex(c => c.StartsWith("a: killfrozen", StringComparison.Ordinal)) > lastPages, string.Join("\n", timeline));
        Assert.Equal(2, target.Calls.Where(c => c.StartsWith("pages ", StringComparison.Ordinal)).Distinct().Count());
        Assert.Contains("killfrozen c1", source.Calls);
        Assert.Equal(MigrationStrategy.PostCopy, report.Strategy);
        Assert.Equal(2 * 16384 * 4096L, report.BytesAfterSwitch);
        Assert.NotNull(report.PageTransfer);
        Assert.Contains(progress, l => l.StartsWith("post-copy: all 32768 pages", StringComparison.Ordinal));
        Assert.Empty(target.Archives);
        Assert.Empty(source.Containers);
    }

    [Fact]
    public async Task A_post_copy_pod_migration_without_tls_makes_no_key_pairs_and_serves_in_the_clear()
    {
        var (source, target, orchestrator, _) = PostCopyPodNodes();

        await orchestrator.RunPodAsync(MovePod(MigrationStrategy.PostCopy) with { PageServerTls = false }, Ct);

        Assert.DoesNotContain("prepare-page-client", target.Calls);
        Assert.Empty(source.PodPageClientCertificates);
        Assert.Equal(new LazyPagesSource("127.0.0.1:7000", null, null), target.PodLazyPages["name-c1"]);
        Assert.Equal(new LazyPagesSource("127.0.0.1:7001", null, null), target.PodLazyPages["name-c2"]);
    }

    [Fact]
    public async Task A_post_copy_pod_migration_whose_transfer_breaks_removes_the_target_pod_and_resumes_every_source_container()
    {
        var (source, target, orchestrator, _) = PostCopyPodNodes();
        target.FailAt = "pages";

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunPodAsync(MovePod(MigrationStrategy.PostCopy), Ct));

        Assert.Contains("broke", e.Message, StringComparison.Ordinal);
        Assert.Contains("undone: the pod runs on a as before", e.Message, StringComparison.Ordinal);
        Assert.Equal("running", source.Containers["c1"]);
        Assert.Equal("running", source.Containers["c2"]);
        Assert.DoesNotContain(source.Calls, c => c.StartsWith("killfrozen", StringComparison.Ordinal));
        Assert.Empty(target.Pods);
        // The page client key pairs go with the undo.
        Assert.Empty(target.Archives);
    }

    [Fact]
    public async Task A_post_copy_pod_whose_memory_does_not_arrive_in_time_names_the_late_container_and_is_undone()
    {
        var (source, target, orchestrator, _) = PostCopyPodNodes();

        // The fake ends the first container's transfer only at its second poll: with no time at all, it is late.
        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunPodAsync(MovePod(MigrationStrategy.PostCopy) with { PageTransferTimeout = TimeSpan.Zero }, Ct));

        var late = target.PodOf.Keys.Order(StringComparer.Ordinal).First();
        Assert.Contains($"the memory of {late} did not arrive", e.Message, StringComparison.Ordinal);
        Assert.Contains("undone: the pod runs on a as before", e.Message, StringComparison.Ordinal);
        Assert.Equal("running", source.Containers["c1"]);
        Assert.Equal("running", source.Containers["c2"]);
        Assert.Empty(target.Pods);
    }

    [Fact]
    public async Task A_post_copy_pod_freeze_by_a_source_that_predates_it_is_undone_before_any_restore()
    {
        var (source, target, orchestrator, _) = PostCopyPodNodes();
        source.IgnoresPodPageServers = true;

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunPodAsync(MovePod(MigrationStrategy.PostCopy), Ct));

        Assert.Contains("named no page server for the memory of c1", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(target.Calls, c => c.StartsWith("restorepod", StringComparison.Ordinal));
        Assert.Equal("running", source.Containers["c1"]);
        Assert.Empty(target.Archives);
    }

    [Fact]
    public async Task A_source_whose_crestd_dies_after_freezing_the_pod_has_every_container_resumed_once_it_is_back()
    {
        var (source, target, orchestrator, _) = PodNodes();
        source.CrashAt = "freezepod";
        source.CrashAfterEffect = true;
        source.DownFor = 2;

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunPodAsync(MovePod(), Ct));

        Assert.Contains("undone: the pod runs on a as before", e.Message, StringComparison.Ordinal);
        Assert.Equal(["c1", "c2"], source.Running.Order(StringComparer.Ordinal));
        Assert.Empty(target.Pods);
        Assert.DoesNotContain(target.Calls, c => c.StartsWith("findpods", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_restored_pod_whose_answer_is_lost_is_found_by_its_label_and_removed_before_the_source_resumes()
    {
        var (source, target, orchestrator, progress) = PodNodes();
        target.CrashAt = "restorepod";
        target.CrashAfterEffect = true;
        target.DownFor = 3;

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunPodAsync(MovePod(), Ct));

        Assert.Contains("undone: the pod runs on a as before", e.Message, StringComparison.Ordinal);
        Assert.Equal(["c1", "c2"], source.Running.Order(StringComparer.Ordinal));
        Assert.Empty(target.Pods);
        Assert.Empty(target.Containers);
        Assert.Contains(progress, p => p.Contains("removed the restored pod pod-b-1", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_target_that_does_not_come_back_after_the_pod_restore_was_asked_for_leaves_the_source_pod_frozen_and_says_how_to_end_it()
    {
        var (source, target, orchestrator, _) = PodNodes();
        target.CrashAt = "restorepod";
        target.CrashAfterEffect = true;

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunPodAsync(MovePod(), Ct));

        Assert.DoesNotContain(source.Calls, c => c.StartsWith("resume", StringComparison.Ordinal));
        Assert.Equal("frozen", source.Containers["c1"]);
        Assert.Equal("frozen", source.Containers["c2"]);
        Assert.Contains("undo stopped: b did not answer within 2 s", e.Message, StringComparison.Ordinal);
        Assert.Contains("crest -r a resume each of c1, c2", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_source_container_that_cannot_be_killed_after_the_pod_switch_is_never_resumed_and_the_operator_is_told()
    {
        var (source, _, orchestrator, _) = PodNodes();
        source.FailAt = "killfrozen";

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunPodAsync(MovePod(), Ct));

        Assert.DoesNotContain(source.Calls, c => c.StartsWith("resume", StringComparison.Ordinal));
        Assert.Contains("pod pod-a now runs on b as pod-b-1", e.Message, StringComparison.Ordinal);
        Assert.Contains("crest -r a stopp pod-a", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_pod_that_keeps_its_address_moves_its_connections_and_its_address_and_the_source_pod_goes()
    {
        var (source, target, orchestrator, progress) = PodNodes();
        source.NetworkGives = "10.131.0.7";

        var report = await orchestrator.RunPodAsync(MovePod() with { KeepAddress = true }, Ct);

        Assert.Contains(source.Calls, c => c.StartsWith("freezepod pod-a tcp-established", StringComparison.Ordinal));
        // RestorePod made the target pod asking its network for the source pod's address, and got it.
        Assert.Equal("10.131.0.7", target.PodConfigs[report.TargetPodId].Annotations[Crest.Core.PodAnnotations.NetworkIps]);
        Assert.DoesNotContain("pod-a", source.Pods);
        Assert.Contains(progress, p => p.Contains("its address now lives on b", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_pod_source_that_cannot_dump_connections_or_a_target_network_that_ignores_the_address_undoes_the_migration()
    {
        var (source, target, orchestrator, _) = PodNodes();
        source.IgnoresTcpEstablished = true;

        var old = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunPodAsync(MovePod() with { KeepAddress = true }, Ct));

        Assert.Contains("predates crest migrate pod --keep-address", old.Message, StringComparison.Ordinal);
        Assert.Equal(["c1", "c2"], source.Running.Order(StringComparer.Ordinal));
        Assert.DoesNotContain(target.Calls, c => c.StartsWith("restorepod", StringComparison.Ordinal));

        (source, target, orchestrator, _) = PodNodes();
        source.NetworkGives = "10.131.0.7";
        target.NetworkHonoursIps = false;

        var ignored = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunPodAsync(MovePod() with { KeepAddress = true }, Ct));

        Assert.Contains("must honour the ips capability", ignored.Message, StringComparison.Ordinal);
        Assert.Equal(["c1", "c2"], source.Running.Order(StringComparer.Ordinal));
        Assert.Empty(target.Pods);
        // Checked before any start: no restored container ever existed on the target.
        Assert.Empty(target.Containers);
        Assert.Empty(target.MigrationIds);
        Assert.Contains("pod-a", source.Pods);
    }
}
