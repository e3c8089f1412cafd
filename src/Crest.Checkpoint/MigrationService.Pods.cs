using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Linux;

namespace Crest.Checkpoint;

/// <summary>What a whole-pod migration's source froze: the pod checkpoint it holds, and the containers it holds frozen.</summary>
public sealed record MigrationPodCheckpoint(string SandboxId, string ArchiveToken, IReadOnlyList<string> ContainerIds, long Bytes, TimeSpan Paused, TimeSpan Total);

// The source of a whole-pod stop-copy migration: the pod checkpoint (CheckpointPod's) with a third end state, every
// container left frozen and held, kept under <root>/migrations/<token>.pod until DropArchive; ReadArchive streams that
// directory as one tar, which the target's RestorePod reads as a pod checkpoint tar.
public sealed partial class MigrationService
{
    private const string PodSuffix = ".pod";

    /// <summary>
    /// Checkpoints every container of a ready pod at one instant and leaves them all frozen, each with a migration hold
    /// (so a crestd restart keeps them frozen), holding the pod checkpoint for <see cref="SendArchiveAsync"/>. Any
    /// failure resumes every container, and nothing is left. <paramref name="timeout"/> (zero: none of its own) bounds
    /// the whole checkpoint.
    /// </summary>
    public async Task<MigrationPodCheckpoint> FreezePodAsync(string sandboxId, TimeSpan timeout, CancellationToken ct)
    {
        Directory.CreateDirectory(ArchiveDir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var token = NewToken();
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        if (timeout > TimeSpan.Zero)
        {
            deadline.CancelAfter(timeout);
        }

        var result = await podCheckpoints.CheckpointAsync(new PodCheckpointRequest
        {
            SandboxId = sandboxId,
            OutputPath = PodCheckpointPath(token),
            HoldFrozen = true,
        }, deadline.Token).ConfigureAwait(false);
        CheckpointLog.MigrationPodFrozen(logger, result.SandboxId, result.Containers.Count, result.Bytes, (long)result.Total.TotalMilliseconds);
        CrashPoints.Hit(CrashPoints.MigrationPodFrozen);
        return new MigrationPodCheckpoint(result.SandboxId, token, [.. result.Containers.Select(c => c.Id)], result.Bytes, result.Total, result.Total);
    }

    /// <summary>The held pod checkpoint of <paramref name="token"/> (checked like any archive token).</summary>
    private string PodCheckpointPath(string token) => Path.ChangeExtension(ArchivePath(token), PodSuffix);

    /// <summary>Streams a held pod checkpoint as one plain tar, made as it goes; false when the token names none.</summary>
    private async Task<bool> SendPodCheckpointAsync(string token, Stream output, CancellationToken ct)
    {
        var dir = PodCheckpointPath(token);
        if (!FileKinds.IsDirectory(dir))
        {
            return false;
        }

        await CheckpointArchive.WriteAsync(dir, output, ArchiveCompression.None, ct).ConfigureAwait(false);
        return true;
    }

    /// <summary>Removes the held pod checkpoints (at start: the containers they froze stay frozen until the client ends them).</summary>
    private int SweepPodCheckpoints()
    {
        var removed = 0;
        foreach (var dir in Directory.EnumerateDirectories(ArchiveDir, "*" + PodSuffix))
        {
            FileKinds.Remove(dir);
            removed++;
        }

        return removed;
    }
}
