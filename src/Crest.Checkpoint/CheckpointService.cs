using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Linux;
using Crest.Runtime;
using Microsoft.Extensions.Logging;

namespace Crest.Checkpoint;

/// <summary>The operator's checkpoint settings ([checkpoint] in config.toml), as the domain sees them.</summary>
public sealed record CheckpointOptions
{
    public bool Enabled { get; init; } = true;
    public bool TcpEstablished { get; init; }
    /// <summary>
    /// The floor of every checkpoint's deadline. A request's timeout below it (0 included) is raised to it, as the
    /// kubelet does before it calls the runtime; a larger one is honoured.
    /// </summary>
    public TimeSpan DefaultTimeout { get; init; } = TimeSpan.FromMinutes(5);
    /// <summary>Compression of the outer archive on the CRI path (none: what the kubelet and other engines expect).</summary>
    public ArchiveCompression Compression { get; init; } = ArchiveCompression.None;

    /// <summary>Where CRIU writes the images while the container is frozen ([checkpoint] work_in_memory).</summary>
    public CheckpointWorkMemory WorkMemory { get; init; } = CheckpointWorkMemory.Auto;
}

/// <summary>What one checkpoint did and measured.</summary>
public sealed record CheckpointResult(
    string ContainerId,
    string Location,
    long ArchiveBytes,
    TimeSpan Total,
    TimeSpan Paused,
    TimeSpan CriuDump,
    TimeSpan RootfsCapture,
    TimeSpan ArchiveWrite,
    DumpStatistics? Criu)
{
    /// <summary>Post-copy: the CRIU that serves the memory the archive leaves out, and owns the dump's work directory.</summary>
    public LazyCheckpoint? PageServer { get; init; }

    /// <summary>A held checkpoint's work directory, which the archive is streamed from (no archive was written; ArchiveBytes is 0).</summary>
    public string? HeldWork { get; init; }

    /// <summary>The rootfs diff in the archive: its entries and the bytes of its regular files (a delta's only, after rounds).</summary>
    public long RootfsEntries { get; init; }

    public long RootfsBytes { get; init; }
}

/// <summary>
/// A migration's rootfs rounds staged on the target before the freeze: the frozen checkpoint's rootfs diff holds only
/// what changed since <see cref="Baseline"/>, and names <see cref="Rounds"/> (each round's SHA-256) in crest-rootfs-rounds.json.
/// </summary>
public sealed record RootfsDelta(RootfsBaseline Baseline, IReadOnlyList<string> Rounds);

/// <summary>
/// CRI CheckpointContainer: pause, CRIU dump (leave running), rootfs changes from the overlay upper directory,
/// resume; only then the archive is assembled and written beside <c>location</c> and renamed into place, so the
/// freeze window holds no archive or compression work and a failure never leaves a partial archive.
/// </summary>
public sealed class CheckpointService(
    ContainerService containers,
    RuntimeLayout layout,
    ICriuProbe criu,
    CheckpointOptions options,
    TimeProvider time,
    ILogger<CheckpointService> logger)
{
    /// <summary>
    /// Checkpoints a running container into the archive at <paramref name="location"/>. With <paramref name="leaveFrozen"/>
    /// (a migration's source) the container stays paused after a successful checkpoint; if anything fails, it is resumed.
    /// <paramref name="tcpEstablished"/>, when given, decides whether CRIU dumps established TCP connections instead of
    /// [checkpoint] tcp_established (a migration that moves the pod's address asks for them). With <paramref name="rootfsDelta"/>
    /// (a migration whose rounds are staged on the target) the rootfs diff holds only what changed since the last round,
    /// deleted.files every deletion as of the freeze, and the archive is marked as a delta (crest-rootfs-rounds.json).
    /// </summary>
    /// <remarks>
    /// With <paramref name="holdWork"/> (a stop-copy migration's source, left frozen) no archive is written at
    /// <paramref name="location"/>: the work directory is kept (<see cref="CheckpointResult.HeldWork"/>) and the archive is
    /// made from it as it streams to the target (<see cref="ContainerCheckpointWriter.StreamArchiveAsync"/>); its owner
    /// removes it with <see cref="ContainerService.RemoveCheckpointWork"/>. The frozen window then holds no archive write.
    /// </remarks>
    public async Task<CheckpointResult> CheckpointAsync(string idOrPrefix, string location, TimeSpan timeout, CancellationToken ct, bool leaveFrozen = false,
        string? lazyPageServer = null, bool? tcpEstablished = null, RootfsDelta? rootfsDelta = null, bool holdWork = false, PageTransferTls? pageServerTls = null)
    {
        var total = Stopwatch.StartNew();
        if (!options.Enabled)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, "checkpoint is disabled by configuration ([checkpoint] enabled = false)");
        }

        var target = ValidateLocation(location);
        var container = await containers.GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        if (container.State != ContainerState.Running)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"container {container.Id} is in CONTAINER_{container.State.ToString().ToUpperInvariant()} state. only CONTAINER_RUNNING containers can be checkpointed");
        }

        var probe = await criu.ProbeAsync(ct).ConfigureAwait(false);
        if (probe.Problem is { } problem)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"cannot checkpoint container {container.Id}: {problem}");
        }

        var limit = EffectiveTimeout(timeout, options.DefaultTimeout);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(limit);
        var token = deadline.Token;

        // A fresh private work directory: removed first (never followed if something planted a link there).
        // A fresh private work directory per call, so two checkpoints of one container never share files.
        var work = Path.Combine(layout.ContainerDir(container.Id), "checkpoint-work-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)));
        RootfsDiffSummary? diff = null;
        long logLength = 0;
        var frozen = false;
        LazyCheckpoint? pageServer = null;
        var keepWork = false;
        try
        {
            // A post-copy dump leaves the memory in CRIU's page pipes; only a full dump's pages go to memory.
            var workspace = await containers.PrepareCheckpointWorkAsync(container, work, lazyPageServer is null ? options.WorkMemory : CheckpointWorkMemory.Never, token).ConfigureAwait(false);
            var images = Path.Combine(work, CheckpointFiles.CriuImages);
            Directory.CreateDirectory(images, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            var spec = await ContainerCheckpointWriter.ReadSpecAsync(layout, container.Id, token).ConfigureAwait(false);
            var excluded = ContainerCheckpointWriter.MountDestinations(spec);
            ContainerService.ContainerDump dump;
            try
            {
                dump = await containers.DumpAsync(container.Id, images, work, tcpEstablished ?? options.TcpEstablished, async (_, upper, innerCt) =>
                {
                    await using var output = new FileStream(Path.Combine(work, CheckpointFiles.RootfsDiff),
                        new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite, BufferSize = 1 << 20 });
                    diff = await ContainerCheckpointWriter.WriteRootfsAsync(upper, output, excluded, rootfsDelta, innerCt).ConfigureAwait(false);

                    // The log copy ends where the log stood while frozen: lines written after the resume belong to the
                    // original, not to what a restore replays. Only the length is taken now; the copy comes later.
                    logLength = container.LogFile.Length > 0 && FileKinds.IsRegularFile(container.LogFile) ? new FileInfo(container.LogFile).Length : 0;
                }, token, leaveFrozen, lazyPageServer, pageServerTls).ConfigureAwait(false);
                frozen = leaveFrozen || lazyPageServer is not null;
                pageServer = dump.PageServer;
            }
            catch (CrestException e) when (e.Kind != ErrorKind.FailedPrecondition)
            {
                throw new CrestException(e.Kind, e.Message + ContainerService.CriuLogExcerpt(Path.Combine(work, CheckpointFiles.DumpLog)), e);
            }

            var checkpointedAt = time.GetUtcNow();
            await ContainerCheckpointWriter.WriteMetadataAsync(work, dump, spec, diff!, logLength, checkpointedAt, token).ConfigureAwait(false);
            if (rootfsDelta is not null)
            {
                await ContainerCheckpointWriter.WriteRootfsRoundsAsync(work, rootfsDelta, token).ConfigureAwait(false);
            }

            var stats = ContainerCheckpointWriter.ReadStats(Path.Combine(work, CheckpointFiles.StatsDump));
            if (!File.Exists(Path.Combine(images, "inventory.img")))
            {
                throw new CrestException(ErrorKind.Internal, $"checkpoint of container {container.Id}: CRIU reported success but wrote no inventory.img; no archive was written");
            }

            var archiveClock = Stopwatch.StartNew();
            var bytes = holdWork ? 0
                : await ContainerCheckpointWriter.WriteArchiveAsync(work, target, options.Compression, token, partialRecord: work + ContainerService.PartialArchiveRecordSuffix).ConfigureAwait(false);
            var result = new CheckpointResult(container.Id, holdWork ? work : target, bytes, total.Elapsed, dump.Paused, dump.CriuDump, dump.RootfsCapture, archiveClock.Elapsed, stats)
            {
                HeldWork = holdWork ? work : null,
            };
            CheckpointLog.Checkpointed(logger, container.Id, result.Location, bytes, (long)result.Total.TotalMilliseconds, (long)result.Paused.TotalMilliseconds,
                stats?.FrozenTimeUs ?? 0, stats?.PagesWritten ?? 0, workspace.Describe());
            CheckpointMetrics.Record(result);
            frozen = false;
            // The page server goes on with the work directory (dump.log); its owner removes both.
            var served = pageServer;
            pageServer = null;
            keepWork = served is not null || holdWork;
            return result with { PageServer = served, RootfsEntries = diff!.Entries, RootfsBytes = diff.Bytes };
        }
        catch (Exception) when (CheckpointMetrics.CheckpointFailed())
        {
            throw; // never reached: the filter counts the failure and declines
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested && !ct.IsCancellationRequested)
        {
            throw new CrestException(ErrorKind.DeadlineExceeded,
                $"checkpoint of container {container.Id} did not finish within its {limit.TotalSeconds:0} s timeout; the container keeps running and no archive was written");
        }
        finally
        {
            if (pageServer is not null)
            {
                // No archive came of a post-copy dump: CRIU stops serving and lets go of the processes first.
                await pageServer.KillAsync().ConfigureAwait(false);
            }

            if (!keepWork)
            {
                try
                {
                    containers.RemoveCheckpointWork(work);
                }
                catch (Exception e) when (e is CrestException or IOException or UnauthorizedAccessException)
                {
                    // The thaw below matters more; a restart's recovery removes what is left.
                    CheckpointLog.WorkNotRemoved(logger, container.Id, work, e.Message);
                }
            }

            if (frozen)
            {
                // A migration's source left frozen by a good dump, but no archive came of it: it runs on.
                await containers.ThawAsync(container.Id, CancellationToken.None).ConfigureAwait(false);
            }
        }
    }

    /// <summary>The deadline of one checkpoint: the request's timeout, never below the configured default.</summary>
    internal static TimeSpan EffectiveTimeout(TimeSpan requested, TimeSpan configuredDefault) =>
        requested > configuredDefault ? requested : configuredDefault;

    /// <summary>location must be absolute, in an existing directory, and not a link or a directory itself.</summary>
    internal static string ValidateLocation(string location)
    {
        if (string.IsNullOrWhiteSpace(location) || !Path.IsPathRooted(location))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint location \"{location}\" must be an absolute path to the archive to write");
        }

        var full = Path.GetFullPath(location);
        var parent = Path.GetDirectoryName(full);
        if (parent is null || !Directory.Exists(parent))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint location {full}: the directory {parent} does not exist; create it first");
        }

        if (FileKinds.IsSymlink(full))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint location {full} is a symbolic link; Crest never writes an archive through a link: remove it or choose another path");
        }

        if (Directory.Exists(full))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint location {full} is a directory; give the path of the archive file to write");
        }

        return full;
    }

}
