using System.Text.Json;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Linux;

namespace Crest.Checkpoint;

// The source's half of a migration through a registry (crest migrate --via): the held checkpoint leaves as a
// checkpoint OCI image, which the target pulls by digest and restores from.
public sealed partial class MigrationService
{
    /// <summary>
    /// Pushes a held checkpoint (a freeze's) to <paramref name="image"/> (REGISTRY/REPO:TAG) as a checkpoint OCI image:
    /// one uncompressed layer holding the archive's files. A container checkpoint carries the annotations of all three
    /// engines on its manifest (<see cref="CheckpointImageAnnotations"/>), a pod checkpoint (FreezePod's) those of a pod
    /// checkpoint image, which RestorePod takes by reference. The archive streams into the layer as it is made; nothing
    /// of the image stays in this node's image store. The held checkpoint stays held (DropArchive ends it).
    /// </summary>
    public async Task<PublishedCheckpoint> PublishAsync(string token, string image, CancellationToken ct)
    {
        var annotations = FileKinds.IsDirectory(PodCheckpointPath(token))
            ? await PodCheckpointImageAnnotationsAsync(token, ct).ConfigureAwait(false)
            : await CheckpointImageAnnotationsAsync(token, ct).ConfigureAwait(false);
        var pipe = new System.IO.Pipelines.Pipe(new System.IO.Pipelines.PipeOptions(pauseWriterThreshold: 4 << 20, resumeWriterThreshold: 2 << 20));
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        Exception? unread = null;
        var writer = Task.Run(async () =>
        {
            try
            {
                await using (var output = pipe.Writer.AsStream(leaveOpen: true))
                {
                    await SendArchiveAsync(token, output, stop.Token).ConfigureAwait(false);
                }

                await pipe.Writer.CompleteAsync().ConfigureAwait(false);
            }
            catch (Exception e)
            {
                unread = e;
                await pipe.Writer.CompleteAsync(e).ConfigureAwait(false);
            }
        }, CancellationToken.None);
        try
        {
            await using var layer = pipe.Reader.AsStream();
            var (manifest, layerBytes) = await images.PublishRootfsAsync(layer, $"the checkpoint of migration archive {token}", image, annotations, ct).ConfigureAwait(false);
            return new PublishedCheckpoint(manifest.ToString(), layerBytes);
        }
        catch (Exception e) when (unread is not null && unread is not OperationCanceledException && e is not OperationCanceledException)
        {
            // The held checkpoint could not be read (not the registry's fault): say so, with what reading it said.
            throw new CrestException(unread is CrestException ce ? ce.Kind : ErrorKind.Internal,
                $"migration archive {token} could not be read to push it to {image}: {unread.Message}; nothing was pushed under that tag", unread);
        }
        finally
        {
            // A push that failed stops the archive's writer rather than letting it run to the end.
            await stop.CancelAsync().ConfigureAwait(false);
            await writer.ConfigureAwait(false);
        }
    }

    /// <summary>The annotations of a pod checkpoint image (as <c>crest checkpoint pod --image</c> writes them) for a held pod checkpoint.</summary>
    private async Task<Dictionary<string, string>> PodCheckpointImageAnnotationsAsync(string token, CancellationToken ct)
    {
        // This node wrote the manifest; the container archives are made as the checkpoint streams (Parse with no directory).
        var path = Path.Combine(PodCheckpointPath(token), PodCheckpointFiles.Manifest);
        var manifest = FileKinds.IsRegularFile(path)
            ? PodCheckpointManifests.Parse(await File.ReadAllBytesAsync(path, ct).ConfigureAwait(false), null)
            : throw new CrestException(ErrorKind.NotFound, $"the pod checkpoint behind migration archive {token} has no {PodCheckpointFiles.Manifest}; freeze the pod again");
        return PodCheckpointFiles.ImageAnnotations(manifest.Containers.Select(c => c.Name));
    }

    /// <summary>
    /// The checkpoint image annotations of a held container checkpoint, from its config.dump and spec.dump: read in the
    /// held work directory of a stop-copy freeze, or from the archive of a post-copy one (which holds no memory).
    /// </summary>
    private async Task<Dictionary<string, string>> CheckpointImageAnnotationsAsync(string token, CancellationToken ct)
    {
        var record = HeldWorkRecord(token);
        if (!File.Exists(record))
        {
            var path = ArchivePath(token);
            return File.Exists(path)
                ? CheckpointImageAnnotations.For(await ArchiveMetadataReader.ReadAsync(path, ct).ConfigureAwait(false))
                : throw new CrestException(ErrorKind.NotFound, $"migration archive {token} is not on this node (not under {ArchiveDir}); freeze the container first");
        }

        var work = HeldWork(record);
        async Task<byte[]> ReadAsync(string name)
        {
            var path = Path.Combine(work, name);
            return FileKinds.IsRegularFile(path)
                ? await File.ReadAllBytesAsync(path, ct).ConfigureAwait(false)
                : throw new CrestException(ErrorKind.NotFound, $"the checkpoint behind migration archive {token} has no {name} ({work}); freeze the container again");
        }

        var config = JsonSerializer.Deserialize(await ReadAsync(CheckpointFiles.ConfigDump).ConfigureAwait(false), CheckpointJson.Default.ConfigDump)
            ?? throw new CrestException(ErrorKind.Internal, $"the held checkpoint {work} has an empty {CheckpointFiles.ConfigDump}");
        var spec = ArchiveMetadataReader.SpecAnnotations(await ReadAsync(CheckpointFiles.SpecDump).ConfigureAwait(false));
        return CheckpointImageAnnotations.For(config, spec);
    }
}

/// <summary>A checkpoint a migration's source pushed: the manifest's digest, and the layer's bytes the registry carries.</summary>
public sealed record PublishedCheckpoint(string ManifestDigest, long LayerBytes);
