using System.Diagnostics.Metrics;
using Microsoft.Extensions.Logging;

namespace Crest.Checkpoint;

internal static partial class CheckpointLog
{
    [LoggerMessage(400, LogLevel.Information, "checkpointed container {ContainerId} to {Location} ({Bytes} bytes) in {TotalMs} ms; paused {PausedMs} ms, CRIU frozen {FrozenUs} us, {Pages} pages written")]
    public static partial void Checkpointed(ILogger logger, string containerId, string location, long bytes, long totalMs, long pausedMs, uint frozenUs, ulong pages);

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
