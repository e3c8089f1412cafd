using Crest.Cli;
using Crest.Cli.Migration;

namespace Crest.UnitTests;

// crest migrate --via REGISTRY/REPO: the checkpoint goes through a registry as a checkpoint image instead of through
// the client, and the safety rule holds the same.
public sealed partial class MigrationOrchestratorTests
{
    private const string ViaRepository = "127.0.0.1:5000/ckpt";

    private static readonly string PublishedDigest = "sha256:" + new string('c', 64);

    private sealed partial class FakeNode
    {
        /// <summary>Images pulled onto this node and not removed since.</summary>
        public HashSet<string> Images { get; } = new(StringComparer.Ordinal);

        /// <summary>The names this node pushed a checkpoint to, in order.</summary>
        public List<string> Published { get; } = [];

        /// <summary>What the last restore was given as its image: a received checkpoint's path, or a checkpoint image.</summary>
        public string? RestoredFrom { get; private set; }

        public Task<(string ManifestDigest, long LayerBytes)> PublishArchiveAsync(string token, string image, CancellationToken ct)
        {
            Step("publish " + token + " " + image);
            Published.Add(image);
            AnswerLost("publish");
            return Task.FromResult((PublishedDigest, 5000L));
        }

        public Task CheckPublishAsync(CancellationToken ct)
        {
            Step("checkpublish");
            return Task.CompletedTask;
        }

        public Task RemoveImageAsync(string image, CancellationToken ct)
        {
            Step("rmi " + image);
            Images.Remove(image);
            return Task.CompletedTask;
        }
    }

    [Fact]
    public async Task Through_a_registry_the_source_pushes_the_checkpoint_and_the_target_restores_from_it_by_digest()
    {
        var (source, target, orchestrator, progress) = Nodes();

        var report = await orchestrator.RunAsync(NewPod() with { Via = ViaRepository }, Ct);

        var image = Assert.Single(source.Published);
        Assert.Matches("^127\\.0\\.0\\.1:5000/ckpt:migration-[0-9a-f]{16}$", image);
        // No rootfs rounds: the image carries the whole rootfs diff, so it restores on its own.
        Assert.Equal(["inspect c1", "checkpublish", "freeze c1", $"publish src-archive {image}", "killfrozen c1", "logtimes c1", "rm c1", "drop src-archive"], source.Calls);
        var byDigest = $"{ViaRepository}@{PublishedDigest}";
        Assert.Equal(["pull registry/busybox@sha256:aa", "runp", $"pullckpt {byDigest}", "restore pod-b-1", "state restored-2", $"rmi {byDigest}"],
            target.Calls.Where(c => !c.StartsWith("logtimes", StringComparison.Ordinal)));
        Assert.Equal(byDigest, target.RestoredFrom);
        Assert.DoesNotContain("write", target.Calls);
        Assert.Empty(target.TrailersReceived);
        // The target keeps no copy of the checkpoint image; the registry keeps its own, and the report names it.
        Assert.Equal(["registry/busybox@sha256:aa"], target.Images);
        Assert.Equal(byDigest, report.CheckpointImage);
        Assert.Equal(5000, report.BytesDuringSwitch);
        Assert.Empty(report.RootfsRounds);
        Assert.Equal([report.TargetContainerId], target.Running);
        Assert.Empty(source.Containers);
        Assert.Contains(progress, p => p.Contains($"in the registry as {byDigest}", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("source", "publish", false)]
    [InlineData("target", "pullckpt", true)]
    [InlineData("target", "restore", true)]
    [InlineData("target", "state", true)]
    public async Task Through_a_registry_a_failure_at_any_step_leaves_the_source_running_and_no_checkpoint_image_on_the_target(string node, string step, bool pushed)
    {
        var (source, target, orchestrator, _) = Nodes();
        (node == "source" ? source : target).FailAt = step;

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunAsync(NewPod() with { Via = ViaRepository }, Ct));

        Assert.Equal(["c1"], source.Running);
        Assert.Empty(target.Containers);
        Assert.Empty(target.Pods);
        Assert.DoesNotContain(target.Images, i => i.StartsWith(ViaRepository, StringComparison.Ordinal));
        // A pull that was asked for is undone on the target, after the source runs again.
        Assert.Equal(pushed, target.Calls.Contains($"rmi {ViaRepository}@{PublishedDigest}"));
        if (pushed)
        {
            Assert.True(source.Calls.IndexOf("resume c1") >= 0);
        }

        Assert.Empty(source.Archives);
        Assert.Contains("undone: the container runs on a as before", e.Message, StringComparison.Ordinal);
        // What the registry holds is not this client's to delete: the message says where it is.
        Assert.Equal(pushed, e.Message.Contains($"the checkpoint image stays in the registry as {ViaRepository}@{PublishedDigest}", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_source_that_cannot_push_is_found_out_before_the_freeze()
    {
        var (source, target, orchestrator, _) = Nodes();
        source.FailAt = "checkpublish";

        await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunAsync(NewPod() with { Via = ViaRepository }, Ct));

        Assert.DoesNotContain(source.Calls, c => c.StartsWith("freeze", StringComparison.Ordinal));
        Assert.Equal(["c1"], source.Running);
        Assert.Empty(target.Pods);
    }

    [Fact]
    public async Task A_push_whose_answer_was_lost_is_undone_and_the_message_names_the_tag_it_may_have_reached()
    {
        var (source, target, orchestrator, _) = Nodes();
        source.CrashAt = "publish";
        source.CrashAfterEffect = true;
        // The source's crestd answers again on the call after the lost one (its restart).
        source.DownFor = 1;

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunAsync(NewPod() with { Via = ViaRepository }, Ct));

        Assert.Equal(["c1"], source.Running);
        Assert.Empty(target.Pods);
        Assert.DoesNotContain(target.Calls, c => c.StartsWith("pullckpt", StringComparison.Ordinal));
        Assert.Matches("the checkpoint image may have reached the registry as 127\\.0\\.0\\.1:5000/ckpt:migration-[0-9a-f]{16}", e.Message);
    }

    [Theory]
    [InlineData("127.0.0.1:5000/ckpt", "127.0.0.1:5000/ckpt")]
    [InlineData("127.0.0.1:5000/team/ckpt/", "127.0.0.1:5000/team/ckpt")]
    [InlineData("registry.example.com/ckpt", "registry.example.com/ckpt")]
    [InlineData("127.0.0.1:5000/ckpt:v1", null)]
    [InlineData("127.0.0.1:5000/ckpt@sha256:0000000000000000000000000000000000000000000000000000000000000000", null)]
    [InlineData("127.0.0.1:5000/Ckpt", null)]
    [InlineData("localhost/ckpt", "localhost/ckpt")]
    [InlineData("ckpt", null)]
    [InlineData("team/ckpt", null)]
    [InlineData("", null)]
    public void Via_takes_a_repository_without_a_tag_or_digest(string via, string? repository)
    {
        if (repository is null)
        {
            var e = Assert.Throws<CliUsageException>(() => MigrationOrchestrator.CheckVia(via));
            Assert.Contains("expected REGISTRY/REPO naming the registry host and no tag or digest", e.Message, StringComparison.Ordinal);
        }
        else
        {
            Assert.Equal(repository, MigrationOrchestrator.CheckVia(via));
        }
    }

    [Fact]
    public void The_publish_rpc_has_new_messages_whose_field_numbers_are_pinned()
    {
        Assert.Equal(1, Crest.Api.V1.PublishArchiveRequest.ArchiveTokenFieldNumber);
        Assert.Equal(2, Crest.Api.V1.PublishArchiveRequest.ImageFieldNumber);
        Assert.Equal(1, Crest.Api.V1.PublishArchiveResponse.ManifestDigestFieldNumber);
        Assert.Equal(2, Crest.Api.V1.PublishArchiveResponse.LayerBytesFieldNumber);
    }

    [Fact]
    public async Task A_pod_through_a_registry_is_pushed_once_frozen_and_restored_on_the_target_from_the_pulled_image()
    {
        var (source, target, orchestrator, _) = PodNodes();

        var report = await orchestrator.RunPodAsync(MovePod() with { Via = ViaRepository }, Ct);

        var image = Assert.Single(source.Published);
        Assert.Matches("^127\\.0\\.0\\.1:5000/ckpt:migration-[0-9a-f]{16}$", image);
        // No rootfs rounds: the pod checkpoint image is whole.
        Assert.Equal(["inspectpod pod-a", "checkpublish", "freezepod pod-a", $"publish src-pod {image}"], source.Calls.Take(4));
        var byDigest = $"{ViaRepository}@{PublishedDigest}";
        Assert.Equal(["pull registry/busybox@sha256:aa", $"pullckpt {byDigest}", $"restorepod {byDigest}"], target.Calls.Take(3));
        Assert.Contains($"rmi {byDigest}", target.Calls);
        Assert.DoesNotContain("write", target.Calls);
        Assert.Equal(byDigest, report.CheckpointImage);
        Assert.Equal(5000, report.BytesDuringSwitch);
        Assert.Empty(source.Running);
        Assert.Equal(2, target.Running.Count());
        Assert.DoesNotContain(target.Images, i => i.StartsWith(ViaRepository, StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("source", "publish", false)]
    [InlineData("target", "pullckpt", true)]
    [InlineData("target", "restorepod", true)]
    public async Task A_pod_through_a_registry_that_fails_at_any_step_runs_on_the_source_and_leaves_no_image_on_the_target(string node, string step, bool pushed)
    {
        var (source, target, orchestrator, _) = PodNodes();
        (node == "source" ? source : target).FailAt = step;

        var e = await Assert.ThrowsAsync<MigrationFailedException>(() => orchestrator.RunPodAsync(MovePod() with { Via = ViaRepository }, Ct));

        Assert.Equal(["c1", "c2"], source.Running.Order(StringComparer.Ordinal));
        Assert.Empty(target.Pods);
        Assert.DoesNotContain(target.Images, i => i.StartsWith(ViaRepository, StringComparison.Ordinal));
        Assert.Equal(pushed, target.Calls.Contains($"rmi {ViaRepository}@{PublishedDigest}"));
        Assert.Empty(source.Archives);
        Assert.Contains("undone: the pod runs on a as before", e.Message, StringComparison.Ordinal);
        Assert.Equal(pushed, e.Message.Contains("the checkpoint image stays in the registry", StringComparison.Ordinal));
    }
}
