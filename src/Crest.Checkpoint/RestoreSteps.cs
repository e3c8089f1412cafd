using System.Text.Json;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Linux;
using Crest.Runtime;

namespace Crest.Checkpoint;

/// <summary>
/// What StartContainer does to a restored container's rootfs before CRIU runs: the checkpoint's rootfs diff and
/// deleted.files applied through <see cref="SafeExtractor"/> (the archive is untrusted), the root directory's mode
/// CRIU checks, and missing bind-mount sources made.
/// </summary>
public sealed class RestoreSteps(RestoreOptions options, PodRestoreHolds holds) : IRestoreSteps
{
    /// <summary>A restored pod's held network is released once its last restored container has run its restore.</summary>
    public Task RestoreFinishedAsync(ContainerRecord container, SandboxRecord sandbox, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(container);
        return holds.LeftCreatedAsync(sandbox, container.Id, container.RestoreCriu?.LeaveStopped == true, ct);
    }

    public async Task ApplyRootfsAsync(string restoreDir, string rootfs, ContainerRecord container, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(container);
        var limits = options.Limits;
        // Checked when the checkpoint was read; checked again as it is written, against what other writers took since.
        using var disk = limits.BudgetOf(rootfs);
        using var extractor = new SafeExtractor(rootfs, ExtractionPolicy.ImageLayer with
        {
            Whiteouts = WhiteoutMode.Delete,
            MaxBytes = limits.MaxRootfsDiffBytes,
            MaxEntries = limits.MaxRootfsDiffEntries,
            MaxPathLength = limits.MaxPathLength,
            Disk = disk,
        });
        // A migration's rounds, staged before the freeze, come first, in order; the checkpoint's diff is what changed since.
        foreach (var round in RootfsStaging.ClaimedRounds(restoreDir))
        {
            await using var file = new FileStream(FileKinds.OpenReadNoFollow(round), FileAccess.Read, 1 << 20);
            await extractor.ExtractAsync(file, $"staged rootfs round {Path.GetFileNameWithoutExtension(round)} of container {container.Id}", ct).ConfigureAwait(false);
        }

        var diff = Path.Combine(restoreDir, CheckpointFiles.RootfsDiff);
        // An empty file is an empty diff (the form Crest wrote for a container that changed nothing before 2026-12-04).
        if (FileKinds.IsRegularFile(diff) && new FileInfo(diff).Length > 0)
        {
            await using var file = new FileStream(FileKinds.OpenReadNoFollow(diff), FileAccess.Read, 1 << 20);
            await using var tar = CheckpointArchive.OpenRead(file);
            try
            {
                await extractor.ExtractAsync(tar, $"the rootfs diff of container {container.Id}", ct).ConfigureAwait(false);
            }
            catch (InvalidDataException e)
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"the rootfs diff of container {container.Id} cannot be decompressed: {e.Message}", e);
            }
        }

        var deleted = Path.Combine(restoreDir, CheckpointFiles.DeletedFiles);
        if (FileKinds.IsRegularFile(deleted))
        {
            if (new FileInfo(deleted).Length > limits.MaxMetadataBytes)
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"deleted.files of container {container.Id} is larger than {limits.MaxMetadataBytes} bytes, the limit for metadata");
            }

            List<string>? paths;
            try
            {
                paths = JsonSerializer.Deserialize(await File.ReadAllBytesAsync(deleted, ct).ConfigureAwait(false), CheckpointJson.Default.ListString);
            }
            catch (JsonException e)
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"deleted.files of container {container.Id} is not a JSON list of paths: {e.Message}", e);
            }

            foreach (var path in (paths ?? []).OfType<string>())
            {
                extractor.Remove(path, $"deleted.files of container {container.Id}");
            }
        }

        // The root directory's mode as the checkpointed process saw it: CRIU checks it ("File . has bad mode").
        if (CriuImages.RootDirectoryMode(Path.Combine(restoreDir, CheckpointFiles.CriuImages)) is { } rootMode)
        {
            // Permission bits only, and never more open than 0755: the value comes from the archive.
            File.SetUnixFileMode(rootfs, (UnixFileMode)(rootMode & 0x1ED));
        }

        // bind.mounts: a source the request declares but that does not exist is made with the recorded type, so
        // CRIU can bind it again. Only request paths are touched: the archive never chooses a host path.
        var binds = Path.Combine(restoreDir, CheckpointFiles.BindMounts);
        if (FileKinds.IsRegularFile(binds) && new FileInfo(binds).Length <= limits.MaxMetadataBytes)
        {
            List<BindMountDump>? recorded;
            try
            {
                recorded = JsonSerializer.Deserialize(await File.ReadAllBytesAsync(binds, ct).ConfigureAwait(false), CheckpointJson.Default.ListBindMountDump);
            }
            catch (JsonException e)
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"bind.mounts of container {container.Id} is not a JSON list of mounts: {e.Message}", e);
            }

            foreach (var b in (recorded ?? []).Where(b => b is { Destination: not null }))
            {
                var mount = container.Spec.Mounts.FirstOrDefault(m => "/" + m.ContainerPath.Trim('/') == "/" + b.Destination.Trim('/'));
                if (mount is null || File.Exists(mount.HostPath) || Directory.Exists(mount.HostPath) || FileKinds.IsSymlink(mount.HostPath))
                {
                    continue;
                }

                // The type comes from the archive; the host-side modes are Crest's (0644, 0755), never the archive's.
                if (b.FileType == "file")
                {
                    Directory.CreateDirectory(Path.GetDirectoryName(mount.HostPath)!);
                    await using var f = new FileStream(mount.HostPath, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = (UnixFileMode)0x1A4 });
                }
                else
                {
                    Directory.CreateDirectory(mount.HostPath, (UnixFileMode)0x1ED);
                }
            }
        }
    }
}
