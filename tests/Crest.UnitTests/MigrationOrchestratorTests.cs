using System.Runtime.CompilerServices;
using Crest.Cli;
using Crest.Cli.Migration;

namespace Crest.UnitTests;

/// <summary>
/// The migration's safety rule, step by step over fake nodes: whatever step fails, exactly one copy of the container
/// runs afterwards (the source, resumed), and nothing the migration made on the target is left.
/// </summary>
public sealed partial class MigrationOrchestratorTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A node: its containers and their states, pods, archives, the calls it saw, and a step made to fail.</summary>
    private sealed partial class FakeNode(string name) : IMigrationNode
    {
        public Dictionary<string, string> Containers { get; } = new(StringComparer.Ordinal);

        public HashSet<string> Pods { get; } = new(StringComparer.Ordinal);

        public HashSet<string> Archives { get; } = new(StringComparer.Ordinal);

        /// <summary>Rootfs rounds this node holds by token: a source's record of what it sent, a target's staged rounds.</summary>
        public HashSet<string> RootfsRounds { get; } = new(StringComparer.Ordinal);

        /// <summary>Source: the bytes each rootfs round sends, in order (the last repeats); the rounds the target staged.</summary>
        public List<long> RoundArchiveBytes { get; } = [8L << 20, 64L << 10];

        public int StagedRounds { get; private set; }

        private readonly Dictionary<string, long> _archiveBytes = new(StringComparer.Ordinal);

        public List<string> Calls { get; } = [];

        public string? FailAt { get; set; }

        public Dictionary<string, string?> Problems { get; } = new(StringComparer.Ordinal);

        public string Name => name;

        /// <summary>Containers that would execute: running and not frozen.</summary>
        public IEnumerable<string> Running => Containers.Where(kv => kv.Value == "running").Select(kv => kv.Key);

        private int _next;

        /// <summary>The call at which this node's crestd dies (before it acts, or with <see cref="CrashAfterEffect"/> after it acted and before it answered).</summary>
        public string? CrashAt { get; set; }

        public bool CrashAfterEffect { get; set; }

        /// <summary>How many calls fail after the crash until the node answers again (its restart); int.MaxValue: it never does.</summary>
        public int DownFor { get; set; } = int.MaxValue;

        private int _down;

        /// <summary>The migration label of each container restored here.</summary>
        public Dictionary<string, string> MigrationIds { get; } = new(StringComparer.Ordinal);

        /// <summary>When set (shared by both nodes), every call of either node in order, as "NODE: call".</summary>
        public List<string>? Timeline { get; set; }

        private void Step(string call)
        {
            Calls.Add(call);
            Timeline?.Add($"{name}: {call}");
            var verb = call.Split(' ')[0];
            if (_down > 0)
            {
                _down--;
                throw new NodeUnavailableException($"{call} on {name}: nothing is listening there");
            }

            if (CrashAt == verb && !CrashAfterEffect)
            {
                Crash(call);
            }

            if (FailAt == verb)
            {
                throw new CliFailure(ExitCodes.RuntimeError, $"{call} failed on {name}");
            }
        }

        /// <summary>The node dies now: this call and the next <see cref="DownFor"/> ones are not answered.</summary>
        private void Crash(string call)
        {
            CrashAt = null;
            _down = DownFor == int.MaxValue ? int.MaxValue : DownFor - 1;
            throw new NodeUnavailableException($"{call} on {name} got no answer, its crestd is down or restarting");
        }

        /// <summary>The node acted on the call, then died before it answered.</summary>
        private void AnswerLost(string call)
        {
            if (CrashAt == call.Split(' ')[0] && CrashAfterEffect)
            {
                Crash(call);
            }
        }

        public Task<NodeCapabilities> CapabilitiesAsync(CancellationToken ct) => Task.FromResult(new NodeCapabilities(new Dictionary<MigrationStrategy, string?>
        {
            [MigrationStrategy.StopCopy] = Problems.GetValueOrDefault("stop-copy"),
            [MigrationStrategy.PostCopy] = Problems.GetValueOrDefault("post-copy", "post-copy is not built"),
            [MigrationStrategy.PreCopy] = Problems.GetValueOrDefault("pre-copy", "Dirty tracking is OFF"),
        }));

        public Task<SourceContainer> InspectAsync(string containerId, CancellationToken ct)
        {
            Step("inspect " + containerId);
            return Task.FromResult(new SourceContainer(containerId, "counter", "pod-a", "registry/busybox:v1", "registry/busybox@sha256:aa", "counter.log", true,
                new Dictionary<string, string>(), new Dictionary<string, string>(), [])
            {
                PodIps = ["10.125.0.7"],
            });
        }

        public Task<long> PullImageAsync(string image, CancellationToken ct)
        {
            // A checkpoint image (--via) and the base image fail apart.
            Step((image.StartsWith(ViaRepository, StringComparison.Ordinal) ? "pullckpt " : "pull ") + image);
            Images.Add(image);
            return Task.FromResult(image.StartsWith(ViaRepository, StringComparison.Ordinal) ? 5000L : 1000L);
        }

        public Task CheckPodAsync(string podId, CancellationToken ct)
        {
            Step("checkpod " + podId);
            return Pods.Contains(podId) ? Task.CompletedTask : throw new CliFailure(ExitCodes.RuntimeError, $"pod {podId} not found");
        }

        /// <summary>The config each pod was made with.</summary>
        public Dictionary<string, global::Runtime.V1.PodSandboxConfig> PodConfigs { get; } = new(StringComparer.Ordinal);

        /// <summary>What the network gives a pod that asks for no address, or ignores what it asked for.</summary>
        public string NetworkGives { get; set; } = "10.126.0.2";

        public bool NetworkHonoursIps { get; set; } = true;

        public Task<string> RunPodAsync(global::Runtime.V1.PodSandboxConfig config, CancellationToken ct)
        {
            Step("runp");
            var id = $"pod-{name}-{++_next}";
            Pods.Add(id);
            PodConfigs[id] = config;
            return Task.FromResult(id);
        }

        public Task<IReadOnlyList<string>> PodIpsAsync(string podId, CancellationToken ct)
        {
            Step("podips " + podId);
            var asked = PodConfigs.GetValueOrDefault(podId)?.Annotations.GetValueOrDefault(Crest.Core.PodAnnotations.NetworkIps);
            return Task.FromResult<IReadOnlyList<string>>([NetworkHonoursIps && asked is not null ? asked : NetworkGives]);
        }

        public Task RemovePodAsync(string podId, CancellationToken ct)
        {
            Step("rmp " + podId);
            Pods.Remove(podId);
            foreach (var c in PodOf.Where(kv => kv.Value == podId).Select(kv => kv.Key).ToList())
            {
                Containers.Remove(c);
            }
            return Task.CompletedTask;
        }

        /// <summary>The page client certificate the last freeze was given (post-copy over TLS).</summary>
        public string? PageClientCertificate { get; private set; }

        private int _pageClients;

        public Task<PageClientIdentity> PreparePageClientAsync(CancellationToken ct)
        {
            Step("prepare-page-client");
            // Held on the node like an archive, and dropped the same way; each call makes a key pair of its own.
            var n = ++_pageClients;
            var token = n == 1 ? "page-client-key" : $"page-client-key-{n}";
            Archives.Add(token);
            return Task.FromResult(new PageClientIdentity(token, n == 1 ? "target-cert" : $"target-cert-{n}"));
        }

        public Task<FrozenSource> FreezeAsync(string containerId, long timeoutSeconds, string? pageServerAddress, bool tcpEstablished, string? rootfsRounds, string? pageClientCertificate, CancellationToken ct)
        {
            PageClientCertificate = pageClientCertificate;
            Step("freeze " + containerId + (tcpEstablished ? " tcp-established" : "") + (rootfsRounds is null ? "" : " after " + rootfsRounds));
            Containers[containerId] = "frozen";
            Archives.Add("src-archive");
            if (rootfsRounds is not null)
            {
                RootfsRounds.Remove(rootfsRounds);
            }

            AnswerLost("freeze");
            return Task.FromResult(new FrozenSource("src-archive", 4096, TimeSpan.FromMilliseconds(300))
            {
                PageServer = pageServerAddress is null ? null : pageServerAddress + ":7000",
                PageServerCertificate = pageClientCertificate is null ? null : "source-cert",
                RootfsBytes = rootfsRounds is null ? 8L << 20 : 512,
            });
        }

        private int _rounds;

        private int _roundSets;

        private int _stagings;

        public Task<SourceRootfsRound> PrepareRootfsRoundAsync(string containerId, string? roundsToken, CancellationToken ct)
        {
            Step("round " + (roundsToken ?? "new"));
            var round = ++_rounds;
            // Each container's rounds have their own token (a pod's containers send theirs one after the other).
            var token = roundsToken ?? (++_roundSets == 1 ? "rounds-a" : $"rounds-a{_roundSets}");
            RootfsRounds.Add(token);
            var bytes = RoundArchiveBytes[Math.Min(round, RoundArchiveBytes.Count) - 1];
            var archive = $"round-{round}";
            Archives.Add(archive);
            _archiveBytes[archive] = bytes;
            return Task.FromResult(new SourceRootfsRound(token, round, archive, bytes, 3, bytes - 2048, round - 1));
        }

        public async Task<(string StagingToken, int Round, long Bytes)> WriteRootfsRoundAsync(string? stagingToken, IAsyncEnumerable<ReadOnlyMemory<byte>> chunks, ArchiveTrailer trailer, CancellationToken ct)
        {
            Step("stage " + (stagingToken ?? "new"));
            long bytes = 0;
            await foreach (var c in chunks.WithCancellation(ct))
            {
                bytes += c.Length;
            }

            TrailersReceived.Add(trailer.Sha256 is { } sha ? Convert.ToHexStringLower(sha) : "none");

            var token = stagingToken ?? (++_stagings == 1 ? "staging-b" : $"staging-b{_stagings}");
            RootfsRounds.Add(token);
            return (token, ++StagedRounds, bytes);
        }

        public Task DropRootfsRoundsAsync(string token, CancellationToken ct)
        {
            Step("droprounds " + token);
            RootfsRounds.Remove(token);
            return Task.CompletedTask;
        }

        public Task ResumeAsync(string containerId, CancellationToken ct)
        {
            Step("resume " + containerId);
            if (Containers[containerId] == "frozen")
            {
                Containers[containerId] = "running";
            }

            return Task.CompletedTask;
        }

        public Task KillFrozenAsync(string containerId, CancellationToken ct)
        {
            Step("killfrozen " + containerId);
            Containers[containerId] = "exited";
            AnswerLost("killfrozen");
            return Task.CompletedTask;
        }

        public async IAsyncEnumerable<ReadOnlyMemory<byte>> ReadArchiveAsync(string token, ArchiveTrailer trailer, [EnumeratorCancellation] CancellationToken ct)
        {
            var round = token.StartsWith("round-", StringComparison.Ordinal);
            Step((round ? "readround " : "read ") + token);
            await Task.Yield();
            var half = (int)(_archiveBytes.GetValueOrDefault(token, 4096) / 2);
            yield return new byte[half];
            Step((round ? "readround-rest " : "read-rest ") + token);
            yield return new byte[half];
            // As the real client: the source's digest, known once its stream ended (here, the token's bytes).
            trailer.Sha256 = System.Text.Encoding.UTF8.GetBytes(token);
        }

        /// <summary>The trailer each WriteArchive and WriteRootfsRound had once its chunks ended, as hex ("none" without one).</summary>
        public List<string> TrailersReceived { get; } = [];

        /// <summary>What the last WriteArchive asked: unpack the archive on receipt.</summary>
        public bool? AskedToUnpack { get; private set; }

        public async Task<(string Token, string Path, long Bytes)> WriteArchiveAsync(IAsyncEnumerable<ReadOnlyMemory<byte>> chunks, bool unpack, ArchiveTrailer trailer, CancellationToken ct)
        {
            Step("write");
            AskedToUnpack = unpack;
            long bytes = 0;
            await foreach (var c in chunks.WithCancellation(ct))
            {
                bytes += c.Length;
            }

            TrailersReceived.Add(trailer.Sha256 is { } sha ? Convert.ToHexStringLower(sha) : "none");

            // As the real node: a cut transfer stores nothing.
            Archives.Add("dst-archive");

            return ("dst-archive", "/target/migrations/dst-archive.tar", bytes);
        }

        public Task DropArchiveAsync(string token, CancellationToken ct)
        {
            Step("drop " + token);
            Archives.Remove(token);
            return Task.CompletedTask;
        }

        /// <summary>Where the last restore was told to fetch its memory (post-copy).</summary>
        public LazyPagesSource? LazyPages { get; private set; }

        public Task<string> RestoreAsync(string podId, string archivePath, SourceContainer source, LazyPagesSource? lazyPages, string? rootfsStaging, CancellationToken ct)
        {
            LazyPages = lazyPages;
            RestoredFrom = archivePath;
            Step("restore " + podId + (lazyPages is null ? "" : " lazy-from " + lazyPages.PageServer));
            if (rootfsStaging is not null)
            {
                // Claimed by the restore, success or not.
                RootfsRounds.Remove(rootfsStaging);
                RestoredWithStaging = rootfsStaging;
            }

            var id = "restored-" + ++_next;
            Containers[id] = FailAt == "state" ? "exited" : "running";
            MigrationIds[id] = source.Labels[MigrationLabels.MigrationId];
            AnswerLost("restore");
            return Task.FromResult(id);
        }

        public string? RestoredWithStaging { get; private set; }

        public Task<IReadOnlyList<string>> FindRestoredAsync(string migrationId, CancellationToken ct)
        {
            Step("find " + migrationId);
            return Task.FromResult<IReadOnlyList<string>>([.. MigrationIds.Where(m => m.Value == migrationId && Containers.ContainsKey(m.Key)).Select(m => m.Key)]);
        }

        /// <summary>Post-copy: the transfer ends after two polls, with every page, or (FailAt "pages") short, its copy killed.</summary>
        public Task<LazyPagesProgress> LazyPagesAsync(string containerId, bool wait, CancellationToken ct)
        {
            Calls.Add("pages " + containerId);
            Timeline?.Add($"{name}: pages {containerId}");
            if (Calls.Count(c => c.StartsWith("pages ", StringComparison.Ordinal)) < 2)
            {
                return Task.FromResult(new LazyPagesProgress(true, false, false, 0, 0, null));
            }

            if (FailAt == "pages")
            {
                Containers[containerId] = "exited";
                return Task.FromResult(new LazyPagesProgress(true, true, false, 10, 16384, "criu lazy-pages ended with exit code 1 after 10 of 16384 pages"));
            }

            return Task.FromResult(new LazyPagesProgress(true, true, true, 16384, 16384, null));
        }

        public Task<string> StateAsync(string containerId, CancellationToken ct)
        {
            Calls.Add("state " + containerId);
            return Task.FromResult(Containers[containerId] == "running" ? "CONTAINER_RUNNING" : "CONTAINER_EXITED (Error 1: restore failed)");
        }

        public Task RemoveContainerAsync(string containerId, CancellationToken ct)
        {
            Step("rm " + containerId);
            Containers.Remove(containerId);
            return Task.CompletedTask;
        }

        public Task<(DateTimeOffset? Last, DateTimeOffset? FirstAfter)> LogTimesAsync(string containerId, DateTimeOffset? after, CancellationToken ct)
        {
            Step("logtimes " + containerId);
            var t0 = new DateTimeOffset(2026, 12, 3, 12, 0, 0, TimeSpan.Zero);
            return Task.FromResult<(DateTimeOffset?, DateTimeOffset?)>(name == "a" ? (t0, null) : (t0.AddMilliseconds(900), t0.AddMilliseconds(800)));
        }
    }

    private static (FakeNode Source, FakeNode Target, MigrationOrchestrator Orchestrator, List<string> Progress) Nodes()
    {
        var source = new FakeNode("a");
        source.Containers["c1"] = "running";
        var target = new FakeNode("b");
        var progress = new List<string>();
        return (source, target, new MigrationOrchestrator(source, target, progress.Add, TimeProvider.System) { NodeReturnTimeout = TimeSpan.FromSeconds(2) }, progress);
    }

    private static MigrationRequest NewPod() => new("c1", MigrationStrategy.StopCopy, null, new global::Runtime.V1.PodSandboxConfig());

    [Fact]
    public async Task A_migration_pre_stages_then_freezes_copies_restores_and_only_then_removes_the_source()
    {
        var (source, target, orchestrator, progress) = Nodes();

        var report = await orchestrator.RunAsync(NewPod(), Ct);

        Assert.Equal(["inspect c1", "round new", "readround round-1", "readround-rest round-1", "drop round-1", "round rounds-a", "readround round-2", "readround-rest round-2", "drop round-2",
            "freeze c1 after rounds-a", "read src-archive", "read-rest src-archive", "killfrozen c1", "logtimes c1", "rm c1", "drop src-archive"], source.Calls);
        Assert.Equal(["pull registry/busybox@sha256:aa", "runp", "stage new", "stage staging-b", "write", "restore pod-b-1"], target.Calls.Take(6));
        Assert.Equal("staging-b", target.RestoredWithStaging);
        // The target unpacks the checkpoint as it arrives, so the restore does not unpack it again.
        Assert.True(target.AskedToUnpack);
        // Each stream reaches the target with the digest its source sent (here the token's bytes), not one the client made.
        Assert.Equal(new[] { "round-1", "round-2", "src-archive" }.Select(t => Convert.ToHexStringLower(System.Text.Encoding.UTF8.GetBytes(t))), target.TrailersReceived);
        // The base image moves before the freeze, the checkpoint during it.
        Assert.True(target.Calls.IndexOf("pull registry/busybox@sha256:aa") < target.Calls.IndexOf("write"));
        Assert.Empty(source.Containers);
        Assert.Equal([report.TargetContainerId], target.Running);
        Assert.Empty(source.Archives);
        Assert.Empty(target.Archives);
        // Before the switch: the base image and both rootfs rounds; the frozen window carried only the last changes.
        Assert.Equal(1000 + (8L << 20) + (64L << 10), report.BytesBeforeSwitch);
        Assert.Equal(4096, report.BytesDuringSwitch);
        Assert.Equal([1, 2], report.RootfsRounds.Select(r => r.Round));
        Assert.Equal(512, report.FrozenRootfsBytes);
        Assert.Empty(source.RootfsRounds);
        Assert.Empty(target.RootfsRounds);
        Assert.Contains(progress, p => p.StartsWith("pre-stage: rootfs round 1: 3 files", StringComparison.Ordinal));
        Assert.Equal(TimeSpan.FromMilliseconds(800), report.Downtime);
        Assert.Contains(progress, p => p.StartsWith("freeze:", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("source", "round")]
    [InlineData("source", "readround-rest")]
    [InlineData("target", "stage")]
    [InlineData("source", "freeze")]
    [InlineData("source", "read")]
    [InlineData("source", "read-rest")]
    [InlineData("target", "write")]
    [InlineData("target", "restore")]
    [InlineData("target", "state")]
    public async Task A_failure_at_any_step_of_the_switch_leaves_exactly_the_source_running_and_nothing_on_the_target(string node, string step)
    {
        var (source, target, orchestrator, _) = Nodes();
        (node == "source" ? source : target).FailAt = step;

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunAsync(NewPod(), Ct));

        Assert.Equal(["c1"], source.Running);
        Assert.Empty(target.Running);
        Assert.Empty(target.Containers);
        Assert.Empty(target.Pods);
        Assert.Empty(target.Archives);
        Assert.Empty(source.Archives);
        Assert.Contains("undone: the container runs on a as before", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("killfrozen c1", source.Calls);
        // The rootfs rounds go too: nothing staged is left on the target, and the source forgot what it sent.
        Assert.Empty(target.RootfsRounds);
        Assert.Empty(source.RootfsRounds);
        Assert.DoesNotContain(source.Archives, a => a.StartsWith("round-", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData(new long[0], true)]
    [InlineData(new long[] { 20L << 20 }, true)]
    [InlineData(new long[] { 900L << 10 }, false)]
    [InlineData(new long[] { 20L << 20, 1L << 20 }, false)]
    [InlineData(new long[] { 20L << 20, 8L << 20 }, true)]
    [InlineData(new long[] { 20L << 20, 20L << 20 }, false)]
    [InlineData(new long[] { 40L << 20, 30L << 20, 20L << 20, 10L << 20 }, false)]
    public void Rootfs_rounds_go_on_while_the_last_was_large_and_shrinking_and_stop_after_the_most(long[] sent, bool another)
    {
        Assert.Equal(another, RootfsRoundRule.AnotherRound(sent));
    }

    [Fact]
    public async Task A_container_whose_rootfs_keeps_changing_is_frozen_after_the_most_rounds()
    {
        var (source, target, orchestrator, _) = Nodes();
        source.RoundArchiveBytes.Clear();
        source.RoundArchiveBytes.AddRange([64L << 20, 32L << 20, 16L << 20, 8L << 20]);

        var report = await orchestrator.RunAsync(NewPod(), Ct);

        Assert.Equal(RootfsRoundRule.MaxRounds, report.RootfsRounds.Count);
        Assert.Equal(RootfsRoundRule.MaxRounds, target.StagedRounds);
    }

    [Theory]
    [InlineData("pull")]
    [InlineData("runp")]
    public async Task A_failure_while_pre_staging_never_touches_the_running_source(string step)
    {
        var (source, target, orchestrator, _) = Nodes();
        target.FailAt = step;

        await Assert.ThrowsAsync<CliFailure>(() => orchestrator.RunAsync(NewPod(), Ct));

        Assert.Equal(["inspect c1"], source.Calls);
        Assert.Equal(["c1"], source.Running);
        Assert.Empty(target.Pods);
    }

    [Fact]
    public async Task An_existing_target_pod_is_kept_when_the_migration_fails()
    {
        var (source, target, orchestrator, _) = Nodes();
        target.Pods.Add("pod-b");
        target.FailAt = "restore";

        await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunAsync(new MigrationRequest("c1", MigrationStrategy.StopCopy, "pod-b", null), Ct));

        Assert.Equal(["pod-b"], target.Pods);
        Assert.Equal(["c1"], source.Running);
    }

    [Fact]
    public async Task A_source_that_cannot_be_killed_after_the_switch_is_never_resumed_and_the_operator_is_told()
    {
        var (source, target, orchestrator, _) = Nodes();
        source.FailAt = "killfrozen";

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunAsync(NewPod(), Ct));

        Assert.Single(target.Running);
        Assert.Empty(source.Running);
        Assert.DoesNotContain("resume c1", source.Calls);
        Assert.Contains("crest -r a rm c1; never crest resume it", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_undo_that_cannot_resume_the_source_says_so()
    {
        var (source, target, orchestrator, _) = Nodes();
        target.FailAt = "restore";
        source.FailAt = "resume";

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunAsync(NewPod(), Ct));

        Assert.Contains("undo incomplete (resuming c1 on a:", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_post_copy_restores_against_the_sources_page_server_and_kills_the_source_only_after_every_page_arrived()
    {
        var (source, target, orchestrator, _) = Nodes();
        source.Problems["post-copy"] = null;
        target.Problems["post-copy"] = null;

        var report = await orchestrator.RunAsync(NewPod() with { Strategy = MigrationStrategy.PostCopy, PageServerAddress = "10.0.0.1" }, Ct);

        Assert.Contains("restore pod-b-1 lazy-from 10.0.0.1:7000", target.Calls);
        var lastPoll = target.Calls.FindLastIndex(c => c.StartsWith("pages ", StringComparison.Ordinal));
        Assert.True(lastPoll > target.Calls.IndexOf("restore pod-b-1 lazy-from 10.0.0.1:7000"));
        Assert.Contains("killfrozen c1", source.Calls);
        Assert.Empty(source.Containers);
        Assert.Equal([report.TargetContainerId], target.Running);
        Assert.Equal(16384L * 4096, report.BytesAfterSwitch);
        Assert.NotNull(report.PageTransfer);
        // Over TLS by default: the target's certificate went to the source, the source's to the target with the target's key token.
        Assert.True(target.Calls.IndexOf("prepare-page-client") < source.Calls.IndexOf("freeze c1") || !source.Calls.Contains("prepare-page-client"));
        Assert.Equal("target-cert", source.PageClientCertificate);
        Assert.Equal(new LazyPagesSource("10.0.0.1:7000", "source-cert", "page-client-key"), target.LazyPages);
        Assert.DoesNotContain("page-client-key", target.Archives);
    }

    [Fact]
    public async Task A_post_copy_without_tls_makes_no_key_pair_and_sends_no_certificate()
    {
        var (source, target, orchestrator, _) = Nodes();
        source.Problems["post-copy"] = null;
        target.Problems["post-copy"] = null;

        await orchestrator.RunAsync(NewPod() with { Strategy = MigrationStrategy.PostCopy, PageServerAddress = "10.0.0.1", PageServerTls = false }, Ct);

        Assert.DoesNotContain("prepare-page-client", target.Calls);
        Assert.Null(source.PageClientCertificate);
        Assert.Equal(new LazyPagesSource("10.0.0.1:7000", null, null), target.LazyPages);
    }

    [Fact]
    public async Task A_post_copy_whose_pages_stop_arriving_leaves_exactly_the_source_running()
    {
        var (source, target, orchestrator, _) = Nodes();
        source.Problems["post-copy"] = null;
        target.Problems["post-copy"] = null;
        target.FailAt = "pages";

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunAsync(NewPod() with { Strategy = MigrationStrategy.PostCopy }, Ct));

        Assert.Contains("after 10 of 16384 pages", e.Message, StringComparison.Ordinal);
        Assert.Equal(["c1"], source.Running);
        Assert.Empty(target.Running);
        Assert.Empty(target.Containers);
        Assert.DoesNotContain("page-client-key", target.Archives);
        Assert.DoesNotContain("killfrozen c1", source.Calls);
    }

    [Theory]
    [InlineData("pre-copy", "Dirty tracking is OFF")]
    [InlineData("post-copy", "post-copy is not built")]
    public async Task A_strategy_a_node_cannot_do_is_refused_with_its_reason_before_anything_happens(string name, string reason)
    {
        var strategy = MigrationStrategies.Parse(name);
        var (source, target, orchestrator, _) = Nodes();

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunAsync(NewPod() with { Strategy = strategy }, Ct));

        Assert.Contains(reason, e.Message, StringComparison.Ordinal);
        Assert.Contains("refused by a", e.Message, StringComparison.Ordinal);
        Assert.Empty(source.Calls);
        Assert.Empty(target.Calls);
    }

    [Fact]
    public void The_migration_service_messages_keep_their_field_numbers()
    {
        Assert.Equal(1, Crest.Api.V1.FreezeRequest.ContainerIdFieldNumber);
        Assert.Equal(2, Crest.Api.V1.FreezeRequest.TimeoutFieldNumber);
        Assert.Equal(4, Crest.Api.V1.FreezeRequest.TcpEstablishedFieldNumber);
        Assert.Equal(2, Crest.Api.V1.FreezeResponse.ArchiveTokenFieldNumber);
        Assert.Equal(3, Crest.Api.V1.FreezeResponse.ArchiveBytesFieldNumber);
        Assert.Equal(4, Crest.Api.V1.FreezeResponse.PausedMsFieldNumber);
        Assert.Equal(5, Crest.Api.V1.FreezeResponse.CriuDumpMsFieldNumber);
        Assert.Equal(1, Crest.Api.V1.ArchiveChunk.DataFieldNumber);
        Assert.Equal(2, Crest.Api.V1.ArchiveChunk.UnpackFieldNumber);
        Assert.Equal(3, Crest.Api.V1.ArchiveChunk.Sha256FieldNumber);
        Assert.Equal(3, Crest.Api.V1.RootfsRoundChunk.Sha256FieldNumber);
        Assert.Equal(2, Crest.Api.V1.WriteArchiveResponse.PathFieldNumber);
        Assert.Equal(2, Crest.Api.V1.LogTimesRequest.AfterUnixNanosFieldNumber);
        Assert.Equal(2, Crest.Api.V1.LogTimesResponse.FirstLineAfterUnixNanosFieldNumber);
        Assert.Equal(3, Crest.Api.V1.StrategySupport.ReasonFieldNumber);
        Assert.Equal(3, Crest.Api.V1.FreezeRequest.PageServerAddressFieldNumber);
        Assert.Equal(6, Crest.Api.V1.FreezeResponse.PageServerFieldNumber);
        Assert.Equal(2, Crest.Api.V1.LazyPagesRequest.WaitFieldNumber);
        Assert.Equal(3, Crest.Api.V1.LazyPagesResponse.SucceededFieldNumber);
        Assert.Equal(6, Crest.Api.V1.LazyPagesResponse.ProblemFieldNumber);
        Assert.Equal(5, Crest.Api.V1.FreezeRequest.RootfsRoundsTokenFieldNumber);
        Assert.Equal(8, Crest.Api.V1.FreezeResponse.RootfsBytesFieldNumber);
        Assert.Equal(2, Crest.Api.V1.PrepareRootfsRoundRequest.RoundsTokenFieldNumber);
        Assert.Equal(3, Crest.Api.V1.PrepareRootfsRoundResponse.ArchiveTokenFieldNumber);
        Assert.Equal(1, Crest.Api.V1.RootfsRoundChunk.StagingTokenFieldNumber);
        Assert.Equal(2, Crest.Api.V1.RootfsRoundChunk.DataFieldNumber);
        Assert.Equal(2, Crest.Api.V1.WriteRootfsRoundResponse.RoundFieldNumber);
    }

    [Fact]
    public void A_cri_log_line_time_keeps_its_fraction_to_100_ns()
    {
        var at = Crest.Checkpoint.MigrationService.LineTime("2026-12-03T13:00:01.123456789+00:00 stdout F count 7");

        Assert.Equal(new DateTimeOffset(2026, 12, 3, 13, 0, 1, TimeSpan.Zero).AddTicks(1234567), at);
        Assert.Null(Crest.Checkpoint.MigrationService.LineTime("not a log line"));
    }

    [Fact]
    public void Pre_copy_is_refused_on_a_kernel_without_soft_dirty_and_post_copy_is_offered_with_userfaultfd()
    {
        var support = Crest.Core.MigrationSupport.From(new Crest.Core.CriuInfo("/usr/sbin/criu", "4.2.1", 40201, null, new Crest.Core.CriuFeatures(MemoryTracking: false, LazyPages: true)));

        Assert.True(support.Single(s => s.Strategy == "stop-copy").Supported);
        Assert.Contains("Dirty tracking is OFF", support.Single(s => s.Strategy == "pre-copy").Reason, StringComparison.Ordinal);
        Assert.True(support.Single(s => s.Strategy == "post-copy").Supported);
    }

    [Fact]
    public void Post_copy_is_refused_with_the_page_server_problem_when_the_pipe_limit_would_break_criu()
    {
        var problem = Crest.Linux.PipeLimits.PageServerProblem("1048576\n", "Name:\tcrestd\nCapEff:\t000001fffeffffff\n");
        var support = Crest.Core.MigrationSupport.From(new Crest.Core.CriuInfo("/usr/sbin/criu", "4.2.1", 40201, null, new Crest.Core.CriuFeatures(false, true, problem)));

        var postCopy = support.Single(s => s.Strategy == "post-copy");
        Assert.False(postCopy.Supported);
        Assert.Contains("fs.pipe-max-size (1048576)", postCopy.Reason, StringComparison.Ordinal);
        Assert.Contains("Bad file descriptor", postCopy.Reason, StringComparison.Ordinal);
        // Raised far enough, or with CAP_SYS_RESOURCE (bit 24), there is no problem.
        Assert.Null(Crest.Linux.PipeLimits.PageServerProblem("4194304", "CapEff:\t000001fffeffffff\n"));
        Assert.Null(Crest.Linux.PipeLimits.PageServerProblem("1048576", "CapEff:\t000001ffffffffff\n"));
    }

    private static MigrationRequest KeepingAddress() => NewPod() with { KeepAddress = true };

    [Fact]
    public async Task Keeping_the_address_makes_the_target_pod_with_the_source_pods_address_moves_tcp_and_removes_the_source_pod_after_the_switch()
    {
        var (source, target, orchestrator, progress) = Nodes();
        source.Pods.Add("pod-a");

        await orchestrator.RunAsync(KeepingAddress(), Ct);

        Assert.Equal("10.125.0.7", target.PodConfigs["pod-b-1"].Annotations[Crest.Core.PodAnnotations.NetworkIps]);
        // The address is checked before the freeze, and the freeze moves the connections.
        Assert.True(target.Calls.IndexOf("podips pod-b-1") < target.Calls.IndexOf("write"));
        // The source pod goes only after the target runs and the source container is gone.
        Assert.Equal(["killfrozen c1", "logtimes c1", "rm c1", "rmp pod-a"], source.Calls.SkipWhile(c => c != "killfrozen c1").Take(4));
        Assert.Contains("freeze c1 tcp-established after rounds-a", source.Calls);
        Assert.Empty(source.Pods);
        Assert.Contains(progress, p => p.Contains("now lives on b", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_migration_that_does_not_keep_the_address_moves_no_tcp_and_leaves_the_source_pod()
    {
        var (source, target, orchestrator, _) = Nodes();
        source.Pods.Add("pod-a");

        await orchestrator.RunAsync(NewPod(), Ct);

        Assert.Contains("freeze c1 after rounds-a", source.Calls);
        Assert.False(target.PodConfigs["pod-b-1"].Annotations.ContainsKey(Crest.Core.PodAnnotations.NetworkIps));
        Assert.DoesNotContain(target.Calls, c => c.StartsWith("podips", StringComparison.Ordinal));
        Assert.Equal(["pod-a"], source.Pods);
    }

    [Fact]
    public async Task A_target_network_that_gives_another_address_fails_the_migration_before_the_freeze_and_the_pod_goes()
    {
        var (source, target, orchestrator, _) = Nodes();
        target.NetworkHonoursIps = false;

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunAsync(KeepingAddress(), Ct));

        Assert.Contains("got the address 10.126.0.2, not the source pod's 10.125.0.7", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(source.Calls, c => c.StartsWith("freeze", StringComparison.Ordinal));
        Assert.Equal(["c1"], source.Running);
        Assert.Empty(target.Pods);
    }

    [Fact]
    public async Task Keeping_the_address_into_an_existing_pod_is_refused_before_anything_happens()
    {
        var (source, target, orchestrator, _) = Nodes();
        target.Pods.Add("pod-b");

        var e = await Assert.ThrowsAsync<CliUsageException>(() => orchestrator.RunAsync(new MigrationRequest("c1", MigrationStrategy.StopCopy, "pod-b", null) { KeepAddress = true }, Ct));

        Assert.Contains("--keep-address needs --pod-config", e.Message, StringComparison.Ordinal);
        Assert.Empty(source.Calls);
        Assert.Empty(target.Calls);
    }

    [Fact]
    public async Task A_source_whose_crestd_restarts_before_the_kill_is_killed_once_it_answers_and_never_resumed()
    {
        var (source, target, orchestrator, progress) = Nodes();
        source.CrashAt = "killfrozen";
        source.DownFor = 3;

        var report = await orchestrator.RunAsync(NewPod(), Ct);

        Assert.Empty(source.Containers);
        Assert.Equal([report.TargetContainerId], target.Running);
        Assert.DoesNotContain("resume c1", source.Calls);
        Assert.Equal(4, source.Calls.Count(c => c == "killfrozen c1"));
        Assert.Contains(progress, p => p.StartsWith("waiting for a to answer (killing the frozen c1)", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_source_that_does_not_come_back_after_the_switch_stays_frozen_and_the_operator_is_told_to_remove_it()
    {
        var (source, target, orchestrator, _) = Nodes();
        source.CrashAt = "killfrozen";

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunAsync(NewPod(), Ct));

        Assert.Equal("frozen", source.Containers["c1"]);
        Assert.Single(target.Running);
        Assert.DoesNotContain("resume c1", source.Calls);
        Assert.Contains("a did not answer within 2 s", e.Message, StringComparison.Ordinal);
        Assert.Contains("crest -r a rm c1", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_source_whose_crestd_dies_in_the_freeze_is_resumed_once_it_is_back_and_the_target_pod_goes()
    {
        var (source, target, orchestrator, _) = Nodes();
        source.CrashAt = "freeze";
        source.CrashAfterEffect = true;
        source.DownFor = 2;

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunAsync(NewPod(), Ct));

        Assert.Contains("undone: the container runs on a as before", e.Message, StringComparison.Ordinal);
        Assert.Equal(["c1"], source.Running);
        Assert.Empty(target.Pods);
        // Nothing was restored: the target is not asked for copies, and the source is resumed before the target's pod goes.
        Assert.DoesNotContain(target.Calls, c => c.StartsWith("find", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_restore_whose_answer_is_lost_is_found_by_its_label_and_removed_before_the_source_resumes()
    {
        var (source, target, orchestrator, progress) = Nodes();
        target.CrashAt = "restore";
        target.CrashAfterEffect = true;
        target.DownFor = 3;

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunAsync(NewPod(), Ct));

        Assert.Contains("undone: the container runs on a as before", e.Message, StringComparison.Ordinal);
        Assert.Equal(["c1"], source.Running);
        Assert.Empty(target.Containers);
        Assert.Empty(target.Pods);
        Assert.Contains(progress, p => p.Contains("removed the restored container restored-2", StringComparison.Ordinal));
        // The copy went before the source ran again.
        Assert.Contains("rm restored-2", target.Calls);
        Assert.Contains("resume c1", source.Calls);
    }

    [Fact]
    public async Task A_target_that_does_not_come_back_after_the_restore_was_asked_for_leaves_the_source_frozen_and_says_how_to_end_it()
    {
        var (source, target, orchestrator, _) = Nodes();
        target.CrashAt = "restore";
        target.CrashAfterEffect = true;

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunAsync(NewPod(), Ct));

        Assert.DoesNotContain("resume c1", source.Calls);
        Assert.Equal("frozen", source.Containers["c1"]);
        Assert.Contains("undo stopped: b did not answer within 2 s", e.Message, StringComparison.Ordinal);
        Assert.Contains("c1 stays frozen on a", e.Message, StringComparison.Ordinal);
        Assert.Contains("crest -r a resume c1", e.Message, StringComparison.Ordinal);
        Assert.Contains("crest -r a rm c1", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_target_that_dies_while_receiving_the_archive_does_not_keep_the_source_frozen()
    {
        var (source, target, orchestrator, _) = Nodes();
        target.CrashAt = "write";

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunAsync(NewPod(), Ct));

        // No restore was asked for, so no copy can run there: the source resumes although the target never comes back.
        Assert.Equal(["c1"], source.Running);
        Assert.Contains("undo incomplete (removing pod pod-b-1 on b", e.Message, StringComparison.Ordinal);
        Assert.True(source.Calls.IndexOf("resume c1") >= 0);
    }

    [Fact]
    public async Task A_target_that_stops_answering_after_the_switch_leaves_the_downtime_unknown_and_the_migration_done()
    {
        var (source, target, orchestrator, progress) = Nodes();
        target.CrashAt = "logtimes";

        var report = await orchestrator.RunAsync(NewPod(), Ct);

        Assert.Null(report.Downtime);
        Assert.Empty(source.Containers);
        Assert.Contains(progress, p => p.StartsWith("downtime unknown:", StringComparison.Ordinal));
    }
}
