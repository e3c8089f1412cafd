using System.Diagnostics;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Linux;
using Crest.Runtime;
using Microsoft.Extensions.Logging;

namespace Crest.Checkpoint;

/// <summary>A RestorePod request as the domain sees it.</summary>
public sealed record PodRestoreRequest
{
    /// <summary>A pod checkpoint: the directory CheckpointPod wrote, that directory as a tar, or a local pod checkpoint image (<see cref="PodCheckpointSources"/>).</summary>
    public required string CheckpointPath { get; init; }
    /// <summary>The new pod's config (the kubelet's, with node-local updates); its runtime handler is the request's.</summary>
    public required PodSpec Pod { get; init; }
    public IReadOnlyDictionary<string, string> Options { get; init; } = new Dictionary<string, string>();
    /// <summary>One config per checkpointed container, matched by metadata name.</summary>
    public required IReadOnlyList<ContainerSpec> Containers { get; init; }
}

/// <summary>What RestorePod made: the new pod sandbox and each container, CREATED, by name.</summary>
public sealed record PodRestoreResult(SandboxRecord Sandbox, IReadOnlyList<RestoredPodContainer> Containers, TimeSpan Total);

public sealed record RestoredPodContainer(string Name, string ContainerId);

/// <summary>
/// CRI RestorePod (KEP-5823): a new pod sandbox (its own IP from CNI) made from the request's config, the pod's shared
/// state put back into it (/dev/shm, System V shared memory with the segment ids CRIU re-attaches), then one restored
/// container per checkpointed container, each through the same plan and checks as a container restore (policy against
/// its config, bind mounts declared again, base image by digest). The containers are left CREATED; StartContainer
/// restores each. A failure removes everything this call made.
/// </summary>
public sealed class PodRestoreService(
    RestoreService restores,
    SandboxService sandboxes,
    PodService pods,
    PodCheckpointSources sources,
    ILinux linux,
    PodOperationJournal journal,
    PodRestoreHolds holds,
    RestoreOptions options,
    ILogger<PodRestoreService> logger)
{
    /// <summary>RestorePod accepts no option keys yet; any key is refused, as KEP-5823 asks.</summary>
    public static readonly IReadOnlyList<string> KnownOptions = [];

    /// <summary>The largest /dev/shm a pod checkpoint may bring back (the pod's tmpfs is 64 MiB).</summary>
    private const long MaxDevShmBytes = 64L << 20;

    public async Task<PodRestoreResult> RestoreAsync(PodRestoreRequest request, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(request);
        var clock = Stopwatch.StartNew();
        foreach (var key in request.Options.Keys)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"RestorePod option \"{key}\" is not known to Crest; RestorePod takes no options yet");
        }

        SandboxRecord? sandbox = null;
        var token = journal.Begin(new PodOperationJournal.Entry { Kind = PodOperationJournal.RestoreKind });
        OpenedPodCheckpoint? source = null;
        try
        {
            source = await sources.OpenAsync(request.CheckpointPath, ct).ConfigureAwait(false);
            var dir = source.Directory;
            var manifest = await PodCheckpointManifests.ReadAsync(dir, options.Limits.MaxMetadataBytes, ct).ConfigureAwait(false);
            var plan = Match(manifest, request.Containers, source.Source);
            var sysvCreator = await SysVCreatorAsync(dir, plan, source.Source, ct).ConfigureAwait(false);
            sandbox = await sandboxes.RunAsync(request.Pod, ct).ConfigureAwait(false);
            journal.Update(token, new PodOperationJournal.Entry { Kind = PodOperationJournal.RestoreKind, SandboxId = sandbox.Id });
            await RestoreSharedAsync(manifest, dir, sandbox, recreateSysV: sysvCreator is null, ct).ConfigureAwait(false);

            var restored = new List<RestoredPodContainer>();
            var held = new List<PodRestoreHolds.HeldContainer>();
            // Several containers come back one StartContainer at a time: each is left stopped until the last is back.
            var together = plan.Count > 1;
            var criu = new CriuRestoreOptions { FileLocks = true, TcpEstablished = manifest.TcpEstablished, LeaveStopped = together };
            foreach (var (spec, part) in plan)
            {
                var archive = Path.Combine(dir, PodCheckpointFiles.ContainerArchive(part.Name));
                // Only the container that has segments attached creates them through CRIU (which then re-attaches them).
                var own = criu with { LeaveOutSysVShm = part.Name != sysvCreator };
                var c = await restores.CreateFromCheckpointAsync(sandbox.Id, spec, archive, CheckpointSourceKind.Archive, source.Source, own, ct).ConfigureAwait(false);
                restored.Add(new RestoredPodContainer(spec.Name, c.Id));
                held.Add(new PodRestoreHolds.HeldContainer(c.Id, Crest.Oci.SpecBuilder.CgroupsPathOf(sandbox, c.Id)));
                CrashPoints.Hit(CrashPoints.PodRestoreContainers);
            }

            if (together)
            {
                // See PodRestoreHolds: the containers continue together, and connections between them outlast the starts.
                await holds.HoldAsync(sandbox, held, holdNetwork: manifest.TcpEstablished, ct).ConfigureAwait(false);
            }

            var result = new PodRestoreResult(sandbox, restored, clock.Elapsed);
            CheckpointLog.PodRestored(logger, sandbox.Id, source.Source, restored.Count, (long)result.Total.TotalMilliseconds);
            PodCheckpointMetrics.Restored(result.Total, restored.Count);
            return result;
        }
        catch (Exception e)
        {
            PodCheckpointMetrics.RestoreFailed();
            if (sandbox is not null)
            {
                // Everything this call made goes: the containers created so far and the pod sandbox.
                CheckpointLog.PodRestoreRollback(logger, request.CheckpointPath, sandbox.Id, e.Message);
                await pods.StopAsync(sandbox.Id, CancellationToken.None).ConfigureAwait(false);
                await pods.RemoveAsync(sandbox.Id, CancellationToken.None).ConfigureAwait(false);
            }

            throw;
        }
        finally
        {
            source?.Dispose();
            journal.End(token);
        }
    }

    /// <summary>
    /// At start, after the pods and containers were recovered and before serving: the pod sandbox (and the containers
    /// in it) of every RestorePod a crashed crestd left unfinished is removed, as a failed call would have. Returns how many.
    /// </summary>
    public async Task<int> SweepInterruptedAsync(CancellationToken ct)
    {
        var n = 0;
        foreach (var (token, entry) in journal.Interrupted().Where(e => e.Entry.Kind == PodOperationJournal.RestoreKind))
        {
            if (entry.SandboxId is { } id)
            {
                await pods.StopAsync(id, ct).ConfigureAwait(false);
                await pods.RemoveAsync(id, ct).ConfigureAwait(false);
                n++;
            }

            journal.End(token);
        }

        return n;
    }

    /// <summary>
    /// Pairs each checkpointed container with the request's config of the same name; a checkpointed container without
    /// a config, or a config naming no checkpointed container, is refused before anything is made.
    /// </summary>
    internal static IReadOnlyList<(ContainerSpec Spec, PodCheckpointContainer Part)> Match(PodCheckpointManifest manifest, IReadOnlyList<ContainerSpec> configs, string source)
    {
        if (configs.Count == 0)
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"RestorePod of {source} has no container_configs; send one ContainerConfig per checkpointed container ({string.Join(", ", manifest.Containers.Select(c => c.Name))})");
        }

        var byName = manifest.Containers.ToDictionary(c => c.Name, StringComparer.Ordinal);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var pairs = new List<(ContainerSpec, PodCheckpointContainer)>();
        foreach (var spec in configs)
        {
            if (!byName.TryGetValue(spec.Name, out var part))
            {
                throw new CrestException(ErrorKind.InvalidArgument,
                    $"container config \"{spec.Name}\" names no container of pod checkpoint {source}; it holds {string.Join(", ", manifest.Containers.Select(c => c.Name))}");
            }

            if (!seen.Add(spec.Name))
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"container config \"{spec.Name}\" is given twice");
            }

            pairs.Add((spec, part));
        }

        var missing = manifest.Containers.Where(c => !seen.Contains(c.Name)).Select(c => c.Name).ToList();
        if (missing.Count > 0)
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"pod checkpoint {source} holds containers with no config in the request: {string.Join(", ", missing)}; send one ContainerConfig for each");
        }

        return pairs;
    }

    /// <summary>The pod's /dev/shm and System V shared memory, put into the new pod before any container is restored.</summary>
    /// <summary>
    /// Which container's CRIU recreates the pod's System V segments: CRIU re-attaches a segment only in the restore that
    /// created it (it looks attachments up among the segments its own images create), so the one container whose
    /// processes had segments attached creates them all; with none attached Crest recreates them (null). Two containers
    /// with attachments cannot both be restored by CRIU: refused before anything is made.
    /// </summary>
    private async Task<string?> SysVCreatorAsync(string dir, IReadOnlyList<(ContainerSpec Spec, PodCheckpointContainer Part)> plan, string source, CancellationToken ct)
    {
        var attaching = new List<string>();
        foreach (var (_, part) in plan)
        {
            var archive = Path.Combine(dir, PodCheckpointFiles.ContainerArchive(part.Name));
            if ((await ArchiveSysVShm.AttachedAsync(archive, options.Limits.MaxMetadataBytes, ct).ConfigureAwait(false)).Count > 0)
            {
                attaching.Add(part.Name);
            }
        }

        return attaching.Count switch
        {
            0 => null,
            1 => attaching[0],
            _ => throw new CrestException(ErrorKind.FailedPrecondition,
                $"pod checkpoint {source}: containers {string.Join(", ", attaching)} each had System V shared memory attached; CRIU re-attaches segments only in the one restore "
                + "that creates them, so only one container of a pod may have segments attached (use POSIX shared memory in /dev/shm, which any number can share)"),
        };
    }

    private async Task RestoreSharedAsync(PodCheckpointManifest manifest, string dir, SandboxRecord sandbox, bool recreateSysV, CancellationToken ct)
    {
        if (manifest.Shared.DevShm)
        {
            var shm = sandboxes.Bundle(sandbox.Id).Shm;
            await using var file = new FileStream(FileKinds.OpenReadNoFollow(Path.Combine(dir, PodCheckpointFiles.DevShm)), FileAccess.Read, 1 << 16);
            using var extractor = new SafeExtractor(shm, ExtractionPolicy.ImageLayer with
            {
                AllowDevices = false,
                Whiteouts = WhiteoutMode.Reject,
                MaxBytes = MaxDevShmBytes,
                MaxEntries = 100_000,
                MaxPathLength = options.Limits.MaxPathLength,
            });
            await extractor.ExtractAsync(file, $"the /dev/shm of pod checkpoint {dir}", ct).ConfigureAwait(false);
        }

        if (manifest.Shared.SysVShm && recreateSysV)
        {
            if (!sandbox.PinnedNamespaces.TryGetValue("ipc", out var ipc))
            {
                throw new CrestException(ErrorKind.FailedPrecondition,
                    $"pod checkpoint {dir} holds System V shared memory, but the new pod sandbox {sandbox.Id} has no IPC namespace of its own to put it in");
            }

            linux.RestoreSysVSharedMemory(ipc, Path.Combine(dir, PodCheckpointFiles.SysVShm), options.Limits.MaxArchiveBytes, ct);
        }
    }
}
