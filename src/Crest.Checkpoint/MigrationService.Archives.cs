using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Linux;

namespace Crest.Checkpoint;

// The archives a migration moves: the source sends what its freeze holds, the target receives (and unpacks) it, and
// either side drops it when the migration ends.
public sealed partial class MigrationService
{
    /// <summary>
    /// Writes a held archive into <paramref name="output"/> (the source sends it): a file under <see cref="ArchiveDir"/>
    /// (a post-copy freeze's, a rootfs round), or the archive of a stop-copy freeze's held work directory, made as it goes.
    /// </summary>
    public async Task SendArchiveAsync(string token, Stream output, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(output);
        if (await SendPodCheckpointAsync(token, output, ct).ConfigureAwait(false))
        {
            return;
        }

        var record = HeldWorkRecord(token);
        if (File.Exists(record))
        {
            await ContainerCheckpointWriter.StreamArchiveAsync(HeldWork(record), output, ct).ConfigureAwait(false);
            return;
        }

        await using var file = OpenArchive(token);
        await file.CopyToAsync(output, 64 << 10, ct).ConfigureAwait(false);
    }

    /// <summary>The held work directory a record names: a checkpoint work directory of a container of this node.</summary>
    private string HeldWork(string record)
    {
        var work = File.ReadAllText(record).Trim();
        if (!IsCheckpointWork(work) || FileKinds.IsSymlink(work) || !Directory.Exists(work))
        {
            throw new CrestException(ErrorKind.NotFound, $"the checkpoint behind migration archive {Path.GetFileNameWithoutExtension(record)} is gone ({work}); freeze the container again");
        }

        return work;
    }

    /// <summary>Whether a held-work record names a checkpoint work directory of one of this node's containers.</summary>
    private bool IsCheckpointWork(string work) =>
        work.StartsWith(paths.Containers + "/", StringComparison.Ordinal) && Path.GetFileName(work).StartsWith("checkpoint-work-", StringComparison.Ordinal);

    private string HeldWorkRecord(string token) => Path.ChangeExtension(ArchivePath(token), HeldWorkSuffix);

    private const string HeldWorkSuffix = ".work";

    /// <summary>A held archive, for reading (the source sends it).</summary>
    public FileStream OpenArchive(string token)
    {
        var path = ArchivePath(token);
        if (!File.Exists(path))
        {
            throw new CrestException(ErrorKind.NotFound, $"migration archive {token} is not on this node (not under {ArchiveDir}); freeze the container first");
        }

        return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, useAsync: true);
    }

    /// <summary>
    /// Stores an archive sent by a migration's source (the target's half); returns its token and the absolute path
    /// that CRI CreateContainer restores from. With <paramref name="unpack"/>, the archive is unpacked as it arrives,
    /// under the restore's checks and caps, into a checkpoint directory (<see cref="CrestPaths.ReceivedCheckpoint"/>)
    /// that one CreateContainer consumes: nothing is written twice, and unpacking overlaps the transfer. A broken
    /// transfer, or an archive the checks refuse, leaves nothing behind.
    /// </summary>
    public async Task<ReceivedArchive> ReceiveAsync(IAsyncEnumerable<ReadOnlyMemory<byte>> chunks, bool unpack, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(chunks);
        if (!restore.ViaCreate)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                "this node does not restore checkpoints through CreateContainer ([restore] via_create = false, or [checkpoint] enabled = false), so it cannot be a migration's target; set [restore] via_create = true in its config.toml");
        }

        // What a sender may put here: the restore's archive cap, and the disk less its reserve (the restore checks again as it unpacks).
        var limits = restore.Limits;
        var into = unpack ? paths.Restores : ArchiveDir;
        Directory.CreateDirectory(into, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var cap = limits.TargetFilesystem is null ? limits.MaxArchiveBytes : Math.Min(limits.MaxArchiveBytes, limits.FreeBytesOf(into) - limits.DiskReserveBytes);
        var tooLarge = () => new CrestException(ErrorKind.ResourceExhausted,
            $"a migration archive sent to this node passed {Math.Max(0, cap)} bytes, what {into} may take ([restore] max_archive_bytes, or the free space less [restore] disk_reserve_bytes); free space on the target or raise the limit");
        var token = NewToken();
        var path = unpack ? paths.ReceivedCheckpoint(token) : ArchivePath(token);
        try
        {
            if (unpack)
            {
                Directory.CreateDirectory(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
                await using var stream = await ChunkReadStream.OpenAsync(chunks, cap, tooLarge, ct).ConfigureAwait(false);
                CrashPoints.Hit(CrashPoints.MigrationArchiveReceiving);
                await new CheckpointReader(limits).UnpackAsync(stream, path, "the migration archive sent to this node", ct).ConfigureAwait(false);
                await stream.DrainAsync().ConfigureAwait(false);
                return new ReceivedArchive(token, path, stream.BytesReceived, Unpacked: true);
            }

            var bytes = await ReceivedFile.WriteAsync(path, chunks, cap, tooLarge,
                (chunk, total) =>
                {
                    if (total == chunk.Length)
                    {
                        CrashPoints.Hit(CrashPoints.MigrationArchiveReceiving);
                    }
                }, ct).ConfigureAwait(false);
            return new ReceivedArchive(token, path, bytes, Unpacked: false);
        }
        catch
        {
            FileKinds.Remove(path);
            throw;
        }
    }

    /// <summary>Deletes a held archive; an unknown token is not an error (a retried cleanup).</summary>
    public void DropArchive(string token)
    {
        FileKinds.Remove(ArchivePath(token));
        // A target's page client identity that no restore took over (the migration failed before it).
        pageTransferIdentities.Remove(token);
        FileKinds.Remove(paths.ReceivedCheckpoint(token));
        DropPodCheckpoint(token);
        var record = HeldWorkRecord(token);
        if (File.Exists(record))
        {
            var work = File.ReadAllText(record).Trim();
            if (IsCheckpointWork(work))
            {
                containers.RemoveCheckpointWork(work);
            }

            File.Delete(record);
        }
    }
}
