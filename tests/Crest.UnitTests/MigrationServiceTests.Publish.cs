using System.Formats.Tar;
using System.Text.Json;
using Crest.Checkpoint;
using Crest.Checkpoint.Format;
using Crest.Core;

namespace Crest.UnitTests;

// The source's half of crest migrate --via: a held checkpoint goes to a registry as a checkpoint OCI image.
public sealed partial class MigrationServiceTests
{
    /// <summary>A stop-copy freeze's held checkpoint as FreezeAsync leaves it: a work directory, and the record naming it.</summary>
    /// <param name="pagesBytes">The size of its pages image (above the publish pipe's 4 MiB, the writer blocks until read).</param>
    private async Task<(string Token, string Work)> HeldStopCopyCheckpointAsync(MigrationService service, int pagesBytes = 10_000)
    {
        var work = Directory.CreateDirectory(Path.Combine(_h.Layout.ContainerDir("c1"), "checkpoint-work-0123456789ab")).FullName;
        Directory.CreateDirectory(Path.Combine(work, "checkpoint"));
        await File.WriteAllBytesAsync(Path.Combine(work, "checkpoint", "pages-1.img"), new byte[pagesBytes], Ct);
        await File.WriteAllBytesAsync(Path.Combine(work, CheckpointFiles.ConfigDump), JsonSerializer.SerializeToUtf8Bytes(new ConfigDump
        {
            Id = "c1",
            Name = "k8s_counter_mig",
            RootfsImage = "registry/busybox:v1",
            RootfsImageRef = "sha256:" + new string('b', 64),
            RootfsImageName = "registry/busybox:v1",
            Runtime = "runc",
        }, CheckpointJson.Default.ConfigDump), Ct);
        await File.WriteAllTextAsync(Path.Combine(work, CheckpointFiles.SpecDump),
            """{"annotations": {"io.kubernetes.cri.container-name": "counter", "io.kubernetes.pod.name": "mig", "io.kubernetes.pod.namespace": "default", "io.container.manager": "crest"}}""", Ct);
        Directory.CreateDirectory(service.ArchiveDir);
        var token = new string('a', 24);
        await File.WriteAllTextAsync(Path.Combine(service.ArchiveDir, token + ".work"), work, Ct);
        return (token, work);
    }

    [Fact]
    public async Task A_held_checkpoint_is_pushed_as_a_checkpoint_image_that_all_three_engines_recognise_and_nothing_stays_in_the_image_store()
    {
        var service = Service(new RestoreOptions { ViaCreate = true });
        var (token, work) = await HeldStopCopyCheckpointAsync(service);

        var published = await service.PublishAsync(token, "127.0.0.1:5000/ckpt:migration-0123", Ct);

        var manifestBytes = _registry.Manifest("127.0.0.1:5000/ckpt", "migration-0123");
        Assert.NotNull(manifestBytes);
        Assert.Equal(Digest.Of(manifestBytes).ToString(), published.ManifestDigest);
        using var manifest = JsonDocument.Parse(manifestBytes);
        var annotations = manifest.RootElement.GetProperty("annotations");
        foreach (var marker in CheckpointImageAnnotations.Markers)
        {
            Assert.Equal("counter", annotations.GetProperty(marker).GetString());
        }

        Assert.Equal("registry/busybox:v1", annotations.GetProperty("io.kubernetes.cri-o.annotations.checkpoint.rawImageName").GetString());
        Assert.Equal("Crest", annotations.GetProperty("org.criu.checkpoint.engine.name").GetString());
        // The one layer is the archive as ReadArchive would stream it: the checkpoint's files at /.
        var layer = manifest.RootElement.GetProperty("layers")[0];
        Assert.Equal(published.LayerBytes, layer.GetProperty("size").GetInt64());
        var names = new List<string>();
        using (var tar = new TarReader(new MemoryStream(_registry.Blob(Digest.Parse(layer.GetProperty("digest").GetString()!))!)))
        {
            while (await tar.GetNextEntryAsync(cancellationToken: Ct) is { } entry)
            {
                names.Add(entry.Name.TrimEnd('/'));
            }
        }

        Assert.Contains("checkpoint/pages-1.img", names);
        Assert.Contains(CheckpointFiles.ConfigDump, names);
        Assert.NotNull(_registry.Blob(Digest.Parse(manifest.RootElement.GetProperty("config").GetProperty("digest").GetString()!)));
        // Not an image of this node, and no blob of it left behind (dropped once the answer is out).
        Assert.Empty(await _h.Images.ListAsync(Ct));
        await _h.Images.PublishedBlobsDropped.WaitAsync(TimeSpan.FromSeconds(30), Ct);
        Assert.Empty(_h.Content.List());
        // The checkpoint stays held until the migration drops it.
        Assert.True(Directory.Exists(work));
    }

    [Fact]
    public async Task A_registry_that_cannot_be_reached_fails_the_push_keeps_the_checkpoint_held_and_leaves_no_blob()
    {
        var service = Service(new RestoreOptions { ViaCreate = true });
        var (token, work) = await HeldStopCopyCheckpointAsync(service);
        _registry.Unreachable = true;

        var e = await Assert.ThrowsAsync<CrestException>(() => service.PublishAsync(token, "127.0.0.1:5000/ckpt:migration-0123", Ct));

        Assert.Equal(ErrorKind.Unavailable, e.Kind);
        Assert.Contains("127.0.0.1:5000", e.Message, StringComparison.Ordinal);
        await _h.Images.PublishedBlobsDropped.WaitAsync(TimeSpan.FromSeconds(30), Ct);
        Assert.Empty(_h.Content.List());
        Assert.True(Directory.Exists(work));
        // Held as before: it still streams whole to a target.
        using var sent = new MemoryStream();
        await service.SendArchiveAsync(token, sent, Ct);
        Assert.True(sent.Length > 10_000);
    }

    [Fact]
    public async Task A_push_needs_a_held_checkpoint_and_a_name_with_a_registry()
    {
        var service = Service(new RestoreOptions { ViaCreate = true });
        Directory.CreateDirectory(service.ArchiveDir);
        var brokenPod = Directory.CreateDirectory(Path.Combine(service.ArchiveDir, new string('b', 24) + ".pod")).FullName;

        var noManifest = await Assert.ThrowsAsync<CrestException>(() => service.PublishAsync(new string('b', 24), "127.0.0.1:5000/ckpt:m", Ct));
        var unknown = await Assert.ThrowsAsync<CrestException>(() => service.PublishAsync(new string('c', 24), "127.0.0.1:5000/ckpt:m", Ct));
        var (token, _) = await HeldStopCopyCheckpointAsync(service);
        var id = await Assert.ThrowsAsync<CrestException>(() => service.PublishAsync(token, "sha256:" + new string('d', 64), Ct));

        Assert.Equal(ErrorKind.NotFound, noManifest.Kind);
        Assert.Contains("freeze the pod again", noManifest.Message, StringComparison.Ordinal);
        Assert.Equal(ErrorKind.NotFound, unknown.Kind);
        Assert.Equal(ErrorKind.InvalidArgument, id.Kind);
        Assert.True(Directory.Exists(brokenPod));
        Assert.Empty(_h.Content.List());
    }

    [Fact]
    public async Task A_refused_name_ends_the_push_at_once_even_while_the_archive_writer_waits_on_a_full_pipe()
    {
        var service = Service(new RestoreOptions { ViaCreate = true });
        var (token, work) = await HeldStopCopyCheckpointAsync(service, pagesBytes: 12 << 20);

        var e = await Assert.ThrowsAsync<CrestException>(() => service.PublishAsync(token, "sha256:" + new string('d', 64), Ct).WaitAsync(TimeSpan.FromSeconds(60), Ct));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.True(Directory.Exists(work));
        Assert.Empty(_h.Content.List());
    }

    [Fact]
    public async Task A_held_checkpoint_without_its_metadata_is_refused_by_name_before_anything_is_pushed()
    {
        var service = Service(new RestoreOptions { ViaCreate = true });
        var (token, work) = await HeldStopCopyCheckpointAsync(service);
        File.Delete(Path.Combine(work, CheckpointFiles.SpecDump));

        var e = await Assert.ThrowsAsync<CrestException>(() => service.PublishAsync(token, "127.0.0.1:5000/ckpt:m", Ct));

        Assert.Equal(ErrorKind.NotFound, e.Kind);
        Assert.Contains($"has no {CheckpointFiles.SpecDump}", e.Message, StringComparison.Ordinal);
        Assert.Null(_registry.Manifest("127.0.0.1:5000/ckpt", "m"));
    }

    [Fact]
    public async Task A_held_pod_checkpoint_is_pushed_as_a_pod_checkpoint_image_that_restore_pod_opens()
    {
        var pod = await PodOfRunningAsync("c1", "c2");
        var service = Service(new RestoreOptions { ViaCreate = true });
        var frozen = await service.FreezePodAsync(pod.Id, TimeSpan.Zero, Ct);

        var published = await service.PublishAsync(frozen.ArchiveToken, "127.0.0.1:5000/ckpt:migration-pod", Ct);

        using var manifest = JsonDocument.Parse(_registry.Manifest("127.0.0.1:5000/ckpt", "migration-pod")!);
        Assert.Equal(Digest.Of(_registry.Manifest("127.0.0.1:5000/ckpt", "migration-pod")!).ToString(), published.ManifestDigest);
        var annotations = manifest.RootElement.GetProperty("annotations");
        Assert.Equal("1", annotations.GetProperty(PodCheckpointFiles.ImageAnnotation).GetString());
        Assert.Equal(["c-c1", "c-c2"], annotations.GetProperty(PodCheckpointFiles.ImageContainersAnnotation).GetString()!.Split(',').Order(StringComparer.Ordinal));
        // The layer is the pod checkpoint tar RestorePod opens: its manifest and each container's archive.
        var layer = Path.Combine(_h.Paths.Root, "layer.tar");
        await File.WriteAllBytesAsync(layer, _registry.Blob(Digest.Parse(manifest.RootElement.GetProperty("layers")[0].GetProperty("digest").GetString()!))!, Ct);
        using (var opened = await PodCheckpointSources.OpenArchiveAsync(layer, _h.Paths.Restores, new RestoreOptions().Limits, Ct))
        {
            var pods = await PodCheckpointManifests.ReadAsync(opened.Directory, 1 << 20, Ct);
            Assert.Equal(["c-c1", "c-c2"], pods.Containers.Select(c => c.Name).Order(StringComparer.Ordinal));
            Assert.All(pods.Containers, c => Assert.Equal(c.ArchiveBytes, new FileInfo(Path.Combine(opened.Directory, PodCheckpointFiles.ContainerArchive(c.Name))).Length));
        }

        await _h.Images.PublishedBlobsDropped.WaitAsync(TimeSpan.FromSeconds(30), Ct);
        Assert.Empty(_h.Content.List());
        // Still held: the containers stay frozen until the migration ends them.
        Assert.Equal("paused", _h.Runtimes.StatusOf("c1"));
        service.DropArchive(frozen.ArchiveToken);
    }
}
