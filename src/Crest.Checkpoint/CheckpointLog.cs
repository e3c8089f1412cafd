using System.Diagnostics.Metrics;
using Microsoft.Extensions.Logging;

namespace Crest.Checkpoint;

internal static partial class CheckpointLog
{
    [LoggerMessage(400, LogLevel.Information, "checkpointed container {ContainerId} to {Location} ({Bytes} bytes) in {TotalMs} ms; paused {PausedMs} ms, CRIU frozen {FrozenUs} us, {Pages} pages written to {Where}")]
    public static partial void Checkpointed(ILogger logger, string containerId, string location, long bytes, long totalMs, long pausedMs, uint frozenUs, ulong pages, string where);

    [LoggerMessage(442, LogLevel.Warning, "checkpoint of container {ContainerId}: its work directory {Work} was not removed ({Reason}); crestd removes it at its next start")]
    public static partial void WorkNotRemoved(ILogger logger, string containerId, string work, string reason);

    [LoggerMessage(465, LogLevel.Warning, "restore staging {Staging} was not removed ({Reason}); crestd removes it at its next start")]
    public static partial void StagingNotRemoved(ILogger logger, string staging, string reason);

    [LoggerMessage(401, LogLevel.Information, "prepared container {ContainerId} for restore from {Source} ({Engine} checkpoint, base image {BaseImage})")]
    public static partial void PreparedRestore(ILogger logger, string containerId, string source, string engine, string baseImage);

    [LoggerMessage(402, LogLevel.Warning, "restore from {Source}: the checkpoint names no base image digest; using the tag {Tag}, which may point at another image than the checkpointed one")]
    public static partial void BaseImageByTag(ILogger logger, string source, string tag);

    [LoggerMessage(403, LogLevel.Warning, "restore from {Source}: dropped annotation {Key} from the checkpoint (it could grant devices the request did not ask for)")]
    public static partial void DroppedAnnotation(ILogger logger, string source, string key);

    [LoggerMessage(404, LogLevel.Information, "restore from {Source}: base image {Image} is not on this node; pulling it")]
    public static partial void PullingBaseImage(ILogger logger, string source, string image);

    [LoggerMessage(406, LogLevel.Warning, "restore from {Source}: policy check {Check} is relaxed by configuration; allowing: {Violation}")]
    public static partial void PolicyRelaxed(ILogger logger, string source, string check, string violation);

    [LoggerMessage(407, LogLevel.Information, "checkpointed pod sandbox {SandboxId} to {Output}: {Containers} containers, {Bytes} bytes in {TotalMs} ms; the pod was frozen {FrozenMs} ms")]
    public static partial void PodCheckpointed(ILogger logger, string sandboxId, string output, int containers, long bytes, long totalMs, long frozenMs);

    [LoggerMessage(408, LogLevel.Information, "restored pod sandbox {SandboxId} from {Source}: {Containers} containers created in {TotalMs} ms")]
    public static partial void PodRestored(ILogger logger, string sandboxId, string source, int containers, long totalMs);

    [LoggerMessage(410, LogLevel.Information, "holding restored pod sandbox {SandboxId} (its processes stopped; its TCP traffic: {Network}) until its {Containers} containers are started")]
    public static partial void PodHeld(ILogger logger, string sandboxId, int containers, bool network);

    [LoggerMessage(411, LogLevel.Information, "released restored pod sandbox {SandboxId}, its containers continue: {Why}")]
    public static partial void PodReleased(ILogger logger, string sandboxId, string why);

    [LoggerMessage(412, LogLevel.Warning, "releasing restored pod sandbox {SandboxId} failed: {Error}")]
    public static partial void PodReleaseFailed(ILogger logger, string sandboxId, string error);

    [LoggerMessage(414, LogLevel.Information, "froze container {ContainerId} for migration: checkpoint archive of {Bytes} bytes held for the target after {TotalMs} ms")]
    public static partial void MigrationFrozen(ILogger logger, string containerId, long bytes, long totalMs);

    [LoggerMessage(415, LogLevel.Information, "migration of container {ContainerId} ended on this node as its source: resumed (if it was frozen)")]
    public static partial void MigrationSourceResumed(ILogger logger, string containerId);

    [LoggerMessage(430, LogLevel.Information, "locked the TCP traffic of pod sandbox {SandboxId} for the migration of container {ContainerId}: its established connections move")]
    public static partial void MigrationNetworkLocked(ILogger logger, string containerId, string sandboxId);

    [LoggerMessage(431, LogLevel.Information, "unlocked the TCP traffic of pod sandbox {SandboxId}: the migration of container {ContainerId} was undone")]
    public static partial void MigrationNetworkUnlocked(ILogger logger, string containerId, string sandboxId);

    [LoggerMessage(440, LogLevel.Information, "rootfs round {Round} of container {ContainerId} for migration: {Files} files, {Bytes} bytes, {Deleted} deletions ({ArchiveBytes} bytes held as {ArchiveToken})")]
    public static partial void MigrationRootfsRound(ILogger logger, string containerId, int round, long files, long bytes, int deleted, long archiveBytes, string archiveToken);

    [LoggerMessage(441, LogLevel.Information, "staged rootfs round {Round} ({Bytes} bytes) for a migration to this node under {StagingToken}")]
    public static partial void MigrationRootfsRoundStaged(ILogger logger, int round, long bytes, string stagingToken);

    [LoggerMessage(450, LogLevel.Information, "froze pod sandbox {SandboxId} for migration: {Containers} containers held frozen, pod checkpoint of {Bytes} bytes held for the target after {TotalMs} ms")]
    public static partial void MigrationPodFrozen(ILogger logger, string sandboxId, int containers, long bytes, long totalMs);

    [LoggerMessage(451, LogLevel.Warning, "freezing a pod for migration failed after its dump; resuming container {ContainerId} failed: {Error} (the client's undo resumes it again)")]
    public static partial void MigrationPodResumeFailed(ILogger logger, string containerId, string error);

    [LoggerMessage(452, LogLevel.Information, "made post-copy page client identity {Token}: a fresh key pair whose certificate the source's page server will pin")]
    public static partial void PageClientPrepared(ILogger logger, string token);

    [LoggerMessage(413, LogLevel.Debug, "restored pod sandbox {SandboxId}: container {ContainerId} continued ({Processes} processes)")]
    public static partial void PodContinued(ILogger logger, string sandboxId, string containerId, int processes);

    [LoggerMessage(409, LogLevel.Warning, "restore of pod from {Source} failed; removing the half-made pod sandbox {SandboxId}: {Error}")]
    public static partial void PodRestoreRollback(ILogger logger, string source, string sandboxId, string error);
}

/// <summary>Checkpoint metrics (System.Diagnostics.Metrics, meter "Crest.Checkpoint").</summary>
internal static class CheckpointMetrics
{
    private static readonly Meter Meter = new("Crest.Checkpoint");
    private static readonly Histogram<double> Duration = Meter.CreateHistogram<double>("crest_checkpoint_duration_seconds", "s", "Time of a whole CheckpointContainer");
    private static readonly Histogram<double> Paused = Meter.CreateHistogram<double>("crest_checkpoint_paused_seconds", "s", "Time the container was frozen during a checkpoint");
    private static readonly Histogram<long> Size = Meter.CreateHistogram<long>("crest_checkpoint_size_bytes", "By", "Size of checkpoint archives");
    private static readonly Counter<long> Pages = Meter.CreateCounter<long>("crest_checkpoint_pages_written_total", null, "Memory pages CRIU wrote");
    private static readonly Counter<long> Checkpoints = Meter.CreateCounter<long>("crest_checkpoints_total", null, "CheckpointContainer calls by result (ok, error)");
    private static readonly Counter<long> Restores = Meter.CreateCounter<long>("crest_restores_total", null, "Restores prepared at CreateContainer by result (ok, error)");
    private static readonly Histogram<double> RestorePrepare = Meter.CreateHistogram<double>("crest_restore_prepare_duration_seconds", "s",
        "Time a restore takes at CreateContainer: reading and checking the checkpoint, pulling the base image, the container's rootfs");

    /// <summary>Counts a failed checkpoint; false, so that it can sit in an exception filter and let the exception pass.</summary>
    public static bool CheckpointFailed()
    {
        Checkpoints.Add(1, new KeyValuePair<string, object?>("result", "error"));
        return false;
    }

    public static void RestorePrepared(TimeSpan elapsed)
    {
        Restores.Add(1, new KeyValuePair<string, object?>("result", "ok"));
        RestorePrepare.Record(elapsed.TotalSeconds);
    }

    /// <summary>Counts a failed restore; false, for an exception filter.</summary>
    public static bool RestoreFailed()
    {
        Restores.Add(1, new KeyValuePair<string, object?>("result", "error"));
        return false;
    }

    public static void Record(CheckpointResult r)
    {
        Checkpoints.Add(1, new KeyValuePair<string, object?>("result", "ok"));
        Duration.Record(r.Total.TotalSeconds);
        Paused.Record(r.Paused.TotalSeconds);
        Size.Record(r.ArchiveBytes);
        if (r.Criu is { } s)
        {
            Pages.Add((long)s.PagesWritten);
        }
    }
}

/// <summary>Pod checkpoint and restore metrics (meter "Crest.Checkpoint.Pod"): crest_pod_checkpoint_* and crest_pod_restore_*.</summary>
internal static class PodCheckpointMetrics
{
    private static readonly Meter Meter = new("Crest.Checkpoint.Pod");
    private static readonly Counter<long> Checkpoints = Meter.CreateCounter<long>("crest_pod_checkpoint_total", null, "CheckpointPod calls by result (ok, error)");
    private static readonly Histogram<double> Duration = Meter.CreateHistogram<double>("crest_pod_checkpoint_duration_seconds", "s", "Time of a whole CheckpointPod");
    private static readonly Histogram<double> Frozen = Meter.CreateHistogram<double>("crest_pod_checkpoint_frozen_seconds", "s", "Time a pod was frozen during CheckpointPod (first pause to last resume)");
    private static readonly Histogram<long> Size = Meter.CreateHistogram<long>("crest_pod_checkpoint_size_bytes", "By", "Bytes a pod checkpoint wrote");
    private static readonly Counter<long> Restores = Meter.CreateCounter<long>("crest_pod_restore_total", null, "RestorePod calls by result (ok, error)");
    private static readonly Histogram<double> RestoreDuration = Meter.CreateHistogram<double>("crest_pod_restore_duration_seconds", "s", "Time of a whole RestorePod (the pod sandbox and its containers created)");
    private static readonly Counter<long> RestoredContainers = Meter.CreateCounter<long>("crest_pod_restore_containers_total", null, "Containers created by RestorePod");

    public static void Checkpointed(PodCheckpointResult r)
    {
        Checkpoints.Add(1, new KeyValuePair<string, object?>("result", "ok"));
        Duration.Record(r.Total.TotalSeconds);
        Frozen.Record(r.Frozen.TotalSeconds);
        Size.Record(r.Bytes);
    }

    /// <summary>Counts a failed pod checkpoint; false, for an exception filter.</summary>
    public static bool CheckpointFailed()
    {
        Checkpoints.Add(1, new KeyValuePair<string, object?>("result", "error"));
        return false;
    }

    public static void Restored(TimeSpan elapsed, int containers)
    {
        Restores.Add(1, new KeyValuePair<string, object?>("result", "ok"));
        RestoreDuration.Record(elapsed.TotalSeconds);
        RestoredContainers.Add(containers);
    }

    public static void RestoreFailed() => Restores.Add(1, new KeyValuePair<string, object?>("result", "error"));
}
