using System.Diagnostics;
using System.Security.Cryptography;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Linux;
using Crest.Runtime;
using Microsoft.Extensions.Logging;

namespace Crest.Checkpoint;

/// <summary>What the pod is left as after CheckpointPod (KEP-5823 post_checkpoint_state).</summary>
public enum PodStateAfterCheckpoint
{
    /// <summary>Every container resumed (the default; also what a failed checkpoint always leaves).</summary>
    Running,

    /// <summary>For migration: the containers are killed while still frozen and the pod is stopped.</summary>
    Stopped,
}

/// <summary>A CheckpointPod request as the domain sees it.</summary>
public sealed record PodCheckpointRequest
{
    public required string SandboxId { get; init; }
    /// <summary>An absolute directory: new (its parent must exist) or empty. Crest writes there and nowhere else.</summary>
    public required string OutputPath { get; init; }
    /// <summary>The containers to include; empty means every container of the pod (all must be running).</summary>
    public IReadOnlyList<string> ContainerIds { get; init; } = [];
    public IReadOnlyDictionary<string, string> Options { get; init; } = new Dictionary<string, string>();
    public PodStateAfterCheckpoint After { get; init; } = PodStateAfterCheckpoint.Running;

    /// <summary>
    /// A whole-pod migration's source (not a CRI field): every container is left frozen and held after a good dump, as
    /// a container migration's freeze leaves one (MigrationService.FreezePodAsync); a failure resumes them all.
    /// </summary>
    internal bool HoldFrozen { get; init; }

    /// <summary>
    /// A whole-pod migration whose containers' rootfs rounds are staged on the target (not a CRI field), by container id:
    /// each such container's rootfs diff holds only what changed since its last round, and its checkpoint names the rounds.
    /// </summary>
    internal IReadOnlyDictionary<string, RootfsDelta> RootfsDeltas { get; init; } = new Dictionary<string, RootfsDelta>();

    /// <summary>
    /// A post-copy pod migration's source (not a CRI field; with <see cref="HoldFrozen"/>), by container id: that
    /// container's memory stays out of its checkpoint and a page server of its own serves it (<see cref="PodCheckpointResult.PageServers"/>).
    /// </summary>
    internal IReadOnlyDictionary<string, LazyDumpTarget> PageServers { get; init; } = new Dictionary<string, LazyDumpTarget>();
}

/// <summary>Where one container's page server listens (<c>HOST:PORT</c>), and its TLS (null: in the clear).</summary>
internal sealed record LazyDumpTarget(string Endpoint, PageTransferTls? Tls);

/// <summary>What one pod checkpoint did and measured.</summary>
public sealed record PodCheckpointResult(string SandboxId, string OutputPath, IReadOnlyList<PodCheckpointContainer> Containers, long Bytes, TimeSpan Total, TimeSpan Frozen)
{
    /// <summary>
    /// A migration's held checkpoint (<see cref="PodCheckpointRequest.HoldFrozen"/>): each container's CRIU work directory,
    /// by container name, kept for its archive to be made as it streams (none was written; <see cref="PodCheckpointContainer.ArchiveBytes"/>
    /// is its measured length). The caller owns them and removes them with <see cref="ContainerService.RemoveCheckpointWork"/>.
    /// </summary>
    public IReadOnlyDictionary<string, string>? HeldWork { get; init; }

    /// <summary>A post-copy source's page servers (<see cref="PodCheckpointRequest.PageServers"/>), by container id; the caller owns them.</summary>
    public IReadOnlyDictionary<string, LazyCheckpoint> PageServers { get; init; } = new Dictionary<string, LazyCheckpoint>();

    /// <summary>The rootfs diffs written while frozen, over every container: entries, and bytes of regular files (after rounds: the deltas only).</summary>
    public long RootfsEntries { get; init; }

    public long RootfsBytes { get; init; }
}

/// <summary>
/// CRI CheckpointPod (KEP-5823): one freeze for the selected containers of a pod. Every container is paused before any
/// is dumped; CRIU dumps each (leave running), its rootfs changes are captured, and the pod's shared state (its
/// /dev/shm, the System V shared memory of its IPC namespace) is saved once, all while frozen; then every container is
/// resumed, on success and failure alike (or, for <see cref="PodStateAfterCheckpoint.Stopped"/>, killed and the pod
/// stopped). Only then are the container archives and pod.json written, into the output directory and nowhere else;
/// a failure or an expired deadline removes what was written there. CRIU writes each container's images into a work
/// directory of its own, a tmpfs when the node has the memory (<see cref="ContainerService.PrepareCheckpointWorkAsync"/>).
/// A migration's held checkpoint (<see cref="PodCheckpointRequest.HoldFrozen"/>) writes no container archive at all:
/// the work directories are handed to the caller, which makes the archives as it streams them after the freeze.
/// </summary>
public sealed partial class PodCheckpointService(
    ContainerService containers,
    SandboxService sandboxes,
    PodService pods,
    RuntimeLayout layout,
    ICriuProbe criu,
    ILinux linux,
    PodOperationJournal journal,
    CheckpointOptions options,
    TimeProvider time,
    ILogger<PodCheckpointService> logger)
{
    /// <summary>The option keys CheckpointPod accepts (any other is refused, as KEP-5823 asks).</summary>
    public const string TcpEstablishedOption = "tcp-established";

    public static readonly IReadOnlyList<string> KnownOptions = [TcpEstablishedOption];

    public async Task<PodCheckpointResult> CheckpointAsync(PodCheckpointRequest request, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(request);
        var total = Stopwatch.StartNew();
        if (!options.Enabled)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, "checkpoint is disabled by configuration ([checkpoint] enabled = false)");
        }

        var tcpEstablished = ParseOptions(request.Options, options.TcpEstablished);
        var sandbox = await sandboxes.GetAsync(request.SandboxId, ct).ConfigureAwait(false);
        if (sandbox.State != SandboxState.Ready)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"pod sandbox {sandbox.Id} is {sandbox.State.ToString().ToUpperInvariant()}; only a ready pod can be checkpointed");
        }

        var selected = await SelectAsync(sandbox, request.ContainerIds, ct).ConfigureAwait(false);
        if (request.RootfsDeltas.Keys.FirstOrDefault(id => selected.All(c => c.Id != id)) is { } stray)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"rootfs rounds were named for container {stray}, which is not one of the checkpointed containers of pod sandbox {sandbox.Id}");
        }

        if (request.PageServers.Keys.FirstOrDefault(id => selected.All(c => c.Id != id)) is { } strayServer)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"a page server was asked for container {strayServer}, which is not one of the running containers of pod sandbox {sandbox.Id} (it stopped?); freeze the pod again");
        }

        if (request.PageServers.Count > 0 && selected.FirstOrDefault(c => !request.PageServers.ContainsKey(c.Id)) is { } unserved)
        {
            // Post-copy moves every container's memory the same way: one dumped whole would be a different checkpoint.
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {unserved.Id} of pod sandbox {sandbox.Id} has no page server (it started after the post-copy freeze was prepared); freeze the pod again");
        }

        var probe = await criu.ProbeAsync(ct).ConfigureAwait(false);
        if (probe.Problem is { } problem)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"cannot checkpoint pod sandbox {sandbox.Id}: {problem}");
        }

        var output = PrepareOutput(request.OutputPath, out var createdOutput);
        var token = journal.Begin(new PodOperationJournal.Entry { Kind = PodOperationJournal.CheckpointKind, Output = output, CreatedOutput = createdOutput });
        var works = new List<(string ContainerId, string Path)>();
        var succeeded = false;
        var frozenHeld = false;
        try
        {
            var parts = new List<ContainerPart>();
            foreach (var c in selected)
            {
                var work = Path.Combine(layout.ContainerDir(c.Id), "checkpoint-work-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)));
                works.Add((c.Id, work));
                // A post-copy dump leaves the anonymous memory out of its images: nothing to keep in memory for it (as a container's lazy dump).
                var workMemory = request.PageServers.ContainsKey(c.Id) ? CheckpointWorkMemory.Never : options.WorkMemory;
                await containers.PrepareCheckpointWorkAsync(c, work, workMemory, ct).ConfigureAwait(false);
                Directory.CreateDirectory(Path.Combine(work, CheckpointFiles.CriuImages), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
                var spec = await ContainerCheckpointWriter.ReadSpecAsync(layout, c.Id, ct).ConfigureAwait(false);
                parts.Add(new ContainerPart(c, work, spec, ContainerCheckpointWriter.MountDestinations(spec)));
            }

            Directory.CreateDirectory(Path.Combine(output, PodCheckpointFiles.ContainersDir), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            Directory.CreateDirectory(Path.Combine(output, PodCheckpointFiles.SharedDir), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            var shared = new PodCheckpointShared();
            var bundle = sandboxes.Bundle(sandbox.Id);
            var targets = parts.Select(p => new ContainerService.PodDumpTarget(p.Container.Id, Path.Combine(p.Work, CheckpointFiles.CriuImages), p.Work,
                async (c, upper, innerCt) =>
                {
                    await using var diffFile = NewFile(Path.Combine(p.Work, CheckpointFiles.RootfsDiff));
                    p.Diff = await ContainerCheckpointWriter.WriteRootfsAsync(upper, diffFile, p.Excluded, request.RootfsDeltas.GetValueOrDefault(p.Container.Id), innerCt).ConfigureAwait(false);
                    p.LogLength = c.LogFile.Length > 0 && FileKinds.IsRegularFile(c.LogFile) ? new FileInfo(c.LogFile).Length : 0;
                })
            {
                LazyPageServer = request.PageServers.GetValueOrDefault(p.Container.Id)?.Endpoint,
                PageServerTls = request.PageServers.GetValueOrDefault(p.Container.Id)?.Tls,
            }).ToList();

            var dump = await containers.DumpPodAsync(sandbox.Id, targets, tcpEstablished, async innerCt =>
            {
                // The pod's shared state, saved once while every selected container is frozen.
                if (FileKinds.IsDirectory(bundle.Shm))
                {
                    await using var shmFile = NewFile(Path.Combine(output, PodCheckpointFiles.DevShm));
                    var summary = await RootfsDiff.WriteAsync(bundle.Shm, shmFile, [], innerCt).ConfigureAwait(false);
                    shared = shared with { DevShm = true, DevShmBytes = summary.Bytes };
                }

                if (sandbox.PinnedNamespaces.TryGetValue("ipc", out var ipc))
                {
                    var image = Path.Combine(output, PodCheckpointFiles.SysVShm);
                    var summary = linux.SaveSysVSharedMemory(ipc, image, innerCt);
                    // Announced only when written: every reader refuses a manifest naming a missing file (a fake seam may write none).
                    shared = shared with { SysVShm = FileKinds.IsRegularFile(image), SysVShmSegments = summary.Segments, SysVShmBytes = summary.TotalBytes };
                }
            }, request.After == PodStateAfterCheckpoint.Stopped, ct, holdFrozen: request.HoldFrozen).ConfigureAwait(false);
            frozenHeld = request.HoldFrozen;

            // Everything below runs with the pod resumed: metadata, archives, the manifest. A migration's held pod is still
            // frozen here, so it writes only the small metadata files and measures each archive; the archives are made as they stream.
            var checkpointedAt = time.GetUtcNow();
            var written = new List<PodCheckpointContainer>();
            long bytes = 0;
            for (var i = 0; i < parts.Count; i++)
            {
                var p = parts[i];
                await ContainerCheckpointWriter.WriteMetadataAsync(p.Work, dump.Containers[i], p.Spec, p.Diff!, p.LogLength, checkpointedAt, ct).ConfigureAwait(false);
                if (request.RootfsDeltas.GetValueOrDefault(p.Container.Id) is { } delta)
                {
                    await ContainerCheckpointWriter.WriteRootfsRoundsAsync(p.Work, delta, ct).ConfigureAwait(false);
                }

                if (!File.Exists(Path.Combine(p.Work, CheckpointFiles.CriuImages, "inventory.img")))
                {
                    throw new CrestException(ErrorKind.Internal, $"checkpoint of container {p.Container.Id}: CRIU reported success but wrote no inventory.img");
                }

                var size = request.HoldFrozen
                    ? await CheckpointArchive.MeasureAsync(p.Work, ct).ConfigureAwait(false)
                    : await ContainerCheckpointWriter.WriteArchiveAsync(p.Work, Path.Combine(output, PodCheckpointFiles.ContainerArchive(p.Container.Spec.Name)), options.Compression, ct).ConfigureAwait(false);
                bytes += size;
                written.Add(new PodCheckpointContainer
                {
                    Name = p.Container.Spec.Name,
                    Id = p.Container.Id,
                    Image = p.Container.Spec.Image,
                    ImageRef = p.Container.ImageRef,
                    Spec = p.Container.Spec,
                    ArchiveBytes = size,
                });
                CrashPoints.Hit(CrashPoints.PodCheckpointWriting);
            }

            var hostname = await CopyPodFilesAsync(bundle, output, ct).ConfigureAwait(false);
            var manifest = new PodCheckpointManifest
            {
                EngineVersion = typeof(PodCheckpointService).Assembly.GetName().Version?.ToString() ?? "",
                CheckpointedAt = checkpointedAt,
                SandboxId = sandbox.Id,
                Pod = sandbox.Spec,
                Ips = sandbox.Ips,
                RuntimeHandler = sandbox.RuntimeHandler,
                Containers = written,
                Shared = shared with { Hostname = hostname },
                FrozenMilliseconds = (long)dump.Frozen.TotalMilliseconds,
                TcpEstablished = tcpEstablished,
                PostCheckpointState = request.HoldFrozen ? "frozen" : request.After == PodStateAfterCheckpoint.Stopped ? "stopped" : "running",
            };
            await PodCheckpointManifests.WriteAsync(output, manifest, ct).ConfigureAwait(false);
            if (request.After == PodStateAfterCheckpoint.Stopped)
            {
                await pods.StopAsync(sandbox.Id, ct).ConfigureAwait(false);
            }

            succeeded = true;
            var result = new PodCheckpointResult(sandbox.Id, output, written, bytes + shared.DevShmBytes + shared.SysVShmBytes, total.Elapsed, dump.Frozen)
            {
                HeldWork = request.HoldFrozen ? parts.ToDictionary(p => p.Container.Spec.Name, p => p.Work, StringComparer.Ordinal) : null,
                PageServers = dump.Containers.Where(d => d.PageServer is not null).ToDictionary(d => d.Container.Id, d => d.PageServer!, StringComparer.Ordinal),
                RootfsEntries = parts.Sum(p => p.Diff!.Entries),
                RootfsBytes = parts.Sum(p => p.Diff!.Bytes),
            };
            CheckpointLog.PodCheckpointed(logger, sandbox.Id, output, written.Count, result.Bytes, (long)result.Total.TotalMilliseconds, (long)result.Frozen.TotalMilliseconds);
            PodCheckpointMetrics.Checkpointed(result);
            return result;
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            PodCheckpointMetrics.CheckpointFailed();
            throw new CrestException(ErrorKind.DeadlineExceeded,
                $"checkpoint of pod sandbox {sandbox.Id} was cancelled or ran out of time before it finished; every container was resumed and nothing was left in {output}");
        }
        catch (Exception) when (PodCheckpointMetrics.CheckpointFailed())
        {
            throw; // never reached: the filter counts the failure and declines
        }
        finally
        {
            // A migration's good held checkpoint keeps its work directories: they are what it streams.
            foreach (var (id, w) in succeeded && request.HoldFrozen ? [] : works)
            {
                try
                {
                    containers.RemoveCheckpointWork(w);
                }
                catch (Exception e) when (e is CrestException or IOException or UnauthorizedAccessException)
                {
                    // The resume below matters more; a restart's recovery removes what is left.
                    CheckpointLog.WorkNotRemoved(logger, id, w, e.Message);
                }
            }

            if (!succeeded)
            {
                RemoveOutput(output, createdOutput);
                if (frozenHeld)
                {
                    // A migration's held pod whose checkpoint could not be finished runs on; one container that cannot be
                    // resumed does not keep the others frozen (the client's undo resumes each again).
                    foreach (var c in selected)
                    {
                        try
                        {
                            await containers.ThawAsync(c.Id, CancellationToken.None).ConfigureAwait(false);
                        }
                        catch (CrestException e)
                        {
                            CheckpointLog.MigrationPodResumeFailed(logger, c.Id, e.Message);
                        }
                    }
                }
            }

            journal.End(token);
        }
    }

    /// <summary>
    /// At start, before serving: the output of every pod checkpoint a crashed crestd left unfinished (no pod.json) is
    /// removed as a failed call would have removed it. The containers it had paused are resumed by the container
    /// recovery. Returns how many were cleaned.
    /// </summary>
    public int SweepInterrupted()
    {
        var n = 0;
        foreach (var (token, entry) in journal.Interrupted().Where(e => e.Entry.Kind == PodOperationJournal.CheckpointKind))
        {
            if (entry.Output is { } output && Path.IsPathRooted(output) && !PodCheckpointManifests.IsPodCheckpoint(output))
            {
                RemoveOutput(output, entry.CreatedOutput);
                n++;
            }

            journal.End(token);
        }

        return n;
    }

    /// <summary>The known options, checked; returns whether established TCP connections are dumped.</summary>
    internal static bool ParseOptions(IReadOnlyDictionary<string, string> requested, bool tcpEstablishedDefault)
    {
        var tcp = tcpEstablishedDefault;
        foreach (var (key, value) in requested)
        {
            switch (key)
            {
                case TcpEstablishedOption:
                    tcp = value switch
                    {
                        "true" => true,
                        "false" => false,
                        _ => throw new CrestException(ErrorKind.InvalidArgument, $"CheckpointPod option {key}=\"{value}\": the value must be true or false"),
                    };
                    break;
                default:
                    throw new CrestException(ErrorKind.InvalidArgument,
                        $"CheckpointPod option \"{key}\" is not known to Crest; the known options are {string.Join(", ", KnownOptions)}");
            }
        }

        return tcp;
    }

    private async Task<IReadOnlyList<ContainerRecord>> SelectAsync(SandboxRecord sandbox, IReadOnlyList<string> ids, CancellationToken ct)
    {
        var inPod = (await containers.ListAsync(ct).ConfigureAwait(false)).Where(c => c.SandboxId == sandbox.Id).ToList();
        List<ContainerRecord> selected;
        if (ids.Count == 0)
        {
            selected = inPod;
            if (selected.Count == 0)
            {
                throw new CrestException(ErrorKind.FailedPrecondition, $"pod sandbox {sandbox.Id} has no containers to checkpoint");
            }
        }
        else
        {
            selected = [];
            foreach (var id in ids)
            {
                var c = await containers.GetAsync(id, ct).ConfigureAwait(false);
                if (c.SandboxId != sandbox.Id)
                {
                    throw new CrestException(ErrorKind.InvalidArgument, $"container {c.Id} is not in pod sandbox {sandbox.Id} (it belongs to {c.SandboxId})");
                }

                if (selected.Any(s => s.Id == c.Id))
                {
                    throw new CrestException(ErrorKind.InvalidArgument, $"container {c.Id} is named twice in container_ids");
                }

                selected.Add(c);
            }
        }

        if (selected.FirstOrDefault(c => c.State != ContainerState.Running) is { } stopped)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"container {stopped.Id} ({stopped.Spec.Name}) of pod sandbox {sandbox.Id} is in CONTAINER_{stopped.State.ToString().ToUpperInvariant()} state; "
                + "every container of a pod checkpoint must be running (name the running ones in container_ids)");
        }

        if (selected.GroupBy(c => c.Spec.Name, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1) is { } twice)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"pod sandbox {sandbox.Id} has {twice.Count()} selected containers named {twice.Key}; a pod checkpoint names each container once");
        }

        if (selected.FirstOrDefault(c => !PodCheckpointFiles.IsValidContainerName(c.Spec.Name)) is { } odd)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {odd.Id} is named \"{odd.Spec.Name}\", which a pod checkpoint cannot use as a file name");
        }

        return selected;
    }

    /// <summary>One selected container while its checkpoint is made.</summary>
    private sealed class ContainerPart(ContainerRecord container, string work, System.Text.Json.Nodes.JsonObject spec, List<string> excluded)
    {
        public ContainerRecord Container { get; } = container;
        public string Work { get; } = work;
        public System.Text.Json.Nodes.JsonObject Spec { get; } = spec;
        public List<string> Excluded { get; } = excluded;
        public RootfsDiffSummary? Diff { get; set; }
        public long LogLength { get; set; }
    }
}
