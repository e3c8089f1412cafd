using System.Globalization;

namespace Crest.Cli.Migration;

// A whole pod, stop-copy or post-copy: each container's rootfs moves in rounds while the pod runs (as a container's does), then the
// source checkpoints every container at one instant and keeps them all frozen (FreezePod),
// the pod checkpoint streams through this client to the target as one tar (or with --via goes through a registry as a
// pod checkpoint image), the target restores it into a new pod
// (CRI RestorePod, then StartContainer of each), and only once every restored container runs are the frozen sources
// killed and removed, and the source pod with them. Any failure before that removes the target's pod (found by the
// migration's label if its answer was lost) and resumes every source container, so exactly one copy of the pod runs.
// Post-copy leaves each container's memory out of the pod checkpoint: a page server per container on the source serves
// it, the restored containers fault it in as they run, and the source pod stays frozen until every page of every
// container arrived; a transfer that breaks is undone like any failure (the target's watchdog kills that copy).
internal sealed partial class MigrationOrchestrator
{
    public async Task<PodMigrationReport> RunPodAsync(PodMigrationRequest request, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(request);
        var started = time.GetTimestamp();
        var via = CheckVia(request.Via);
        await CheckStrategyAsync(request.Strategy, ct).ConfigureAwait(false);
        var postCopy = request.Strategy == MigrationStrategy.PostCopy;
        var pod = await source.InspectPodAsync(request.PodId, ct).ConfigureAwait(false);
        progress($"source: pod {pod.Id} on {source.Name} runs {pod.Containers.Count} containers ({string.Join(", ", pod.Containers.Select(c => c.Name))})");

        // Pre-staging: the base images move while the pod still runs.
        long before = 0;
        foreach (var digestRef in pod.Containers.Select(c => c.BaseImageDigestReference).OfType<string>().Distinct(StringComparer.Ordinal))
        {
            progress($"pre-stage: {target.Name} pulls the base image {digestRef}");
            before += await target.PullImageAsync(digestRef, ct).ConfigureAwait(false);
        }

        foreach (var c in pod.Containers.Where(c => c.BaseImageDigestReference is null))
        {
            progress($"pre-stage: base image {c.Image} of {c.Name} has no registry digest; {target.Name} must already hold it (the restore checks it)");
        }

        // --keep-address: the new pod asks the target's network for the source pod's addresses; RestorePod makes it.
        IReadOnlyList<string> sourceIps = request.KeepAddress ? await source.PodIpsAsync(pod.Id, ct).ConfigureAwait(false) : [];
        var podConfig = request.KeepAddress ? WithSourceAddress(request.TargetPodConfig, sourceIps, $"pod {pod.Id}") : request.TargetPodConfig;

        // Labels the restored pod and its containers: a RestorePod whose answer is lost is found on the target by it.
        var migrationId = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8));
        var rootfs = pod.Containers.ToDictionary(c => c.Id, _ => new RootfsPreStaging(), StringComparer.Ordinal);
        FrozenPod? frozen = null;
        string? targetToken = null;
        RestoredPod? restored = null;
        var hop = new RegistryHop();
        var restoreSent = false;
        long bytesDuring = 0;
        var switchStarted = time.GetTimestamp();
        TimeSpan frozenFor;
        TimeSpan? pageTransfer = null;
        long bytesAfter = 0;
        // Post-copy over TLS: the target's key pair for each container's transfer, by source container id.
        var pageClients = new Dictionary<string, PageClientIdentity>(StringComparer.Ordinal);
        try
        {
            if (via is not null)
            {
                await source.CheckPublishAsync(ct).ConfigureAwait(false);
            }

            if (request.RootfsRounds && via is null)
            {
                foreach (var c in pod.Containers)
                {
                    await StageRootfsAsync(c.Id, rootfs[c.Id], ct).ConfigureAwait(false);
                }
            }
            else if (via is not null)
            {
                progress(NoRoundsThroughRegistry);
            }

            if (postCopy && request.PageServerTls)
            {
                // Before the switch's clock starts: one key pair per container's page server, made and kept on the target.
                foreach (var c in pod.Containers)
                {
                    pageClients[c.Id] = await target.PreparePageClientAsync(ct).ConfigureAwait(false);
                }

                progress($"pre-stage: {target.Name} made a key pair for each container's memory over TLS; each page server on the source will accept only its own");
            }

            before += rootfs.Values.Sum(r => r.BytesSent);
            progress(postCopy
                ? $"freeze: checkpointing every container of pod {pod.Id} on {source.Name} at one instant without its memory, which a page server per container on {request.PageServerAddress} serves; they stay frozen until the target has all of it"
                : $"freeze: checkpointing every container of pod {pod.Id} on {source.Name} at one instant; they stay frozen until the target runs");
            switchStarted = time.GetTimestamp();
            var rounds = rootfs.Where(r => r.Value.SourceToken is not null).ToDictionary(r => r.Key, r => r.Value.SourceToken!, StringComparer.Ordinal);
            frozen = await source.FreezePodAsync(pod.Id, request.FreezeTimeoutSeconds, rounds, request.KeepAddress, postCopy ? request.PageServerAddress : null,
                pageClients.ToDictionary(kv => kv.Key, kv => kv.Value.Certificate, StringComparer.Ordinal), ct).ConfigureAwait(false);
            if (request.KeepAddress && !frozen.TcpEstablished)
            {
                // A source crestd that predates it ignored the request: its checkpoint holds no connection, which would reset.
                throw new InvalidOperationException($"{source.Name} froze pod {pod.Id} without dumping its TCP connections (its crestd predates crest migrate pod --keep-address); upgrade it, or migrate without --keep-address");
            }

            var lazyPages = postCopy ? LazyPagesOf(pod, frozen, pageClients) : new Dictionary<string, LazyPagesSource>();
            var roundCount = rootfs.Values.Sum(r => r.Rounds.Count);
            progress(string.Create(CultureInfo.InvariantCulture,
                $"freeze: pod checkpoint of {frozen.CheckpointBytes} bytes ready, {frozen.Paused.TotalMilliseconds:0} ms after the freeze began; {frozen.ContainerIds.Count} containers held frozen; ")
                + string.Create(CultureInfo.InvariantCulture, $"rootfs in the frozen window: {frozen.RootfsEntries} entries, {frozen.RootfsBytes} bytes")
                + (roundCount > 0 ? string.Create(CultureInfo.InvariantCulture, $" (the rest came in {roundCount} rounds before it)") : ""));

            string path;
            if (via is not null)
            {
                bytesDuring = await CarryThroughRegistryAsync(frozen.ArchiveToken, via, migrationId, hop, ct).ConfigureAwait(false);
                path = hop.Image!;
            }
            else
            {
                var relayed = new RelayCount();
                var trailer = new ArchiveTrailer();
                (targetToken, path, var bytes) = await target.WriteArchiveAsync(Counted(ReadAhead(source.ReadArchiveAsync(frozen.ArchiveToken, trailer, ct), ct), relayed, ct), unpack: false, trailer, ct).ConfigureAwait(false);
                if (bytes != relayed.Bytes)
                {
                    throw new InvalidOperationException($"the target received {bytes} bytes of the pod checkpoint, the source sent {relayed.Bytes}");
                }

                bytesDuring = bytes;
                progress(string.Create(CultureInfo.InvariantCulture, $"transfer: {bytes} bytes to {target.Name}"));
            }

            restoreSent = true;
            var config = podConfig.Clone();
            config.Labels[MigrationLabels.MigrationId] = migrationId;
            var staged = pod.Containers.Where(c => rootfs[c.Id].TargetToken is not null).ToDictionary(c => c.Name, c => rootfs[c.Id].TargetToken!, StringComparer.Ordinal);
            // With --keep-address the target checks the pod's address before it starts any container.
            restored = await target.RestorePodAsync(path, config, [.. pod.Containers.Select(c => Labelled(c, migrationId))], staged, sourceIps, lazyPages, ct).ConfigureAwait(false);
            progress($"restore: pod {restored.PodId} on {target.Name} runs {string.Join(", ", restored.ContainerIds.Select(kv => $"{kv.Key} as {kv.Value}"))}");

            foreach (var c in pod.Containers)
            {
                var id = restored.ContainerIds.GetValueOrDefault(c.Name)
                    ?? throw new InvalidOperationException($"the target's RestorePod did not restore container {c.Name} of pod {pod.Id}");
                await ExpectRunningAsync(id, ct).ConfigureAwait(false);
            }

            frozenFor = time.GetElapsedTime(switchStarted);
            if (postCopy)
            {
                // The source stays frozen, its memory whole, until every container's last page arrived.
                var transfer = time.GetTimestamp();
                var pages = await AwaitPagesAsync(restored.ContainerIds.Values, request.PageTransferTimeout, ct).ConfigureAwait(false);
                pageTransfer = time.GetElapsedTime(transfer);
                bytesAfter = pages * PageSize;
                progress(string.Create(CultureInfo.InvariantCulture,
                    $"post-copy: all {pages} pages ({bytesAfter} bytes) of {restored.ContainerIds.Count} containers arrived, {pageTransfer.Value.TotalMilliseconds:0} ms after the pod ran on the target"));
            }
        }
        catch (Exception e)
        {
            var undo = await UndoPodAsync(pod, frozen, targetToken, restored?.PodId, restoreSent ? migrationId : null, hop.Image, [.. pageClients.Values.Select(c => c.Token)]).ConfigureAwait(false);

            var rootfsUndo = new List<string>();
            foreach (var staging in rootfs.Values)
            {
                if (await DropRootfsRoundsAsync(staging).ConfigureAwait(false) is { } problem)
                {
                    rootfsUndo.Add(problem);
                }
            }

            throw new MigrationFailedException($"migration of pod {pod.Id} from {source.Name} to {target.Name} failed: {Describe(e)}; {undo}"
                + (rootfsUndo.Count == 0 ? "" : $" ({string.Join("; ", rootfsUndo)})") + hop.LeftInRegistry, e);
        }

        // Every container runs on the target with its state: no source container may run again.
        var lastLines = await EndSourcePodAsync(pod, restored, request.KeepAddress).ConfigureAwait(false);
        await DropArchiveAsync(source, frozen.ArchiveToken).ConfigureAwait(false);
        if (targetToken is not null)
        {
            await DropArchiveAsync(target, targetToken).ConfigureAwait(false);
        }

        if (hop.Image is not null)
        {
            await RemoveCheckpointImageAsync(hop.Image).ConfigureAwait(false);
        }

        foreach (var client in pageClients.Values)
        {
            // Gone already with the transfer; dropped in case that crestd restarted meanwhile.
            await DropArchiveAsync(target, client.Token).ConfigureAwait(false);
        }

        progress($"done: removed pod {pod.Id} and its containers from {source.Name}");

        var moves = new List<PodContainerMove>();
        foreach (var c in pod.Containers)
        {
            var to = restored.ContainerIds[c.Name];
            var last = lastLines.GetValueOrDefault(c.Id);
            var first = last is null ? null : await FirstTargetLineOrUnknownAsync(to, last.Value, ct).ConfigureAwait(false);
            moves.Add(new PodContainerMove(c.Name, c.Id, to, first - last, last, first) { RootfsRounds = rootfs[c.Id].Rounds });
        }

        var downtimes = moves.Select(m => m.Downtime).OfType<TimeSpan>().ToList();
        return new PodMigrationReport(pod.Id, restored.PodId, moves, before, bytesDuring, frozenFor, downtimes.Count == 0 ? null : downtimes.Max(), time.GetElapsedTime(started))
        {
            FrozenRootfsBytes = frozen.RootfsBytes,
            CheckpointImage = hop.Image,
            Strategy = request.Strategy,
            BytesAfterSwitch = bytesAfter,
            PageTransfer = pageTransfer,
        };
    }

    /// <summary>
    /// Post-copy: where each container's restore fetches its memory, by container name; a container the source froze
    /// without a page server (or, over TLS, without a certificate) is a failure, which the caller undoes.
    /// </summary>
    private Dictionary<string, LazyPagesSource> LazyPagesOf(SourcePod pod, FrozenPod frozen, IReadOnlyDictionary<string, PageClientIdentity> pageClients)
    {
        var lazy = new Dictionary<string, LazyPagesSource>(StringComparer.Ordinal);
        foreach (var c in pod.Containers)
        {
            if (frozen.PageServers.GetValueOrDefault(c.Id) is not { } server)
            {
                throw new InvalidOperationException($"{source.Name} froze pod {pod.Id} but named no page server for the memory of {c.Id} ({c.Name}) (its crestd predates post-copy pod migration); "
                    + "upgrade it, or migrate the pod stop-copy");
            }

            var client = pageClients.GetValueOrDefault(c.Id);
            if (client is not null && server.Certificate is null)
            {
                throw new InvalidOperationException($"{source.Name} froze pod {pod.Id} but answered no page server certificate for {c.Id} ({c.Name}), so its page server would not use TLS; "
                    + "upgrade it, or migrate with --no-page-server-tls");
            }

            lazy[c.Name] = new LazyPagesSource(server.PageServer, client is null ? null : server.Certificate, client?.Token);
        }

        return lazy;
    }

    /// <summary>
    /// The target runs the pod: each frozen source container is killed (never resumed) and removed, then the source pod,
    /// waiting for a source crestd that restarts meanwhile. Returns each source container's last log line time.
    /// </summary>
    private async Task<Dictionary<string, DateTimeOffset?>> EndSourcePodAsync(SourcePod pod, RestoredPod restored, bool keepAddress)
    {
        var lastLines = new Dictionary<string, DateTimeOffset?>(StringComparer.Ordinal);
        var step = "";
        try
        {
            foreach (var c in pod.Containers)
            {
                step = $"killing the frozen {c.Id}";
                await WhenAnsweredAsync(source, step, () => source.KillFrozenAsync(c.Id, CancellationToken.None)).ConfigureAwait(false);
            }

            foreach (var c in pod.Containers)
            {
                step = $"reading the log times of {c.Id}";
                var (last, _) = await WhenAnsweredAsync(source, step, () => source.LogTimesAsync(c.Id, null, CancellationToken.None)).ConfigureAwait(false);
                lastLines[c.Id] = last;
                step = $"removing {c.Id}";
                await WhenAnsweredAsync(source, step, () => source.RemoveContainerAsync(c.Id, CancellationToken.None)).ConfigureAwait(false);
            }

            step = $"removing pod {pod.Id}";
            await WhenAnsweredAsync(source, step, () => source.RemovePodAsync(pod.Id, CancellationToken.None)).ConfigureAwait(false);
            if (keepAddress)
            {
                progress($"source pod: removed {pod.Id} from {source.Name}; its address now lives on {target.Name} in pod {restored.PodId}");
            }
            return lastLines;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            var waited = e is NodeUnavailableException ? string.Create(CultureInfo.InvariantCulture, $" ({source.Name} did not answer within {NodeReturnTimeout.TotalSeconds:0} s)") : "";
            throw new MigrationFailedException(
                $"pod {pod.Id} now runs on {target.Name} as {restored.PodId}, but {step} on {source.Name} failed{waited}: {Describe(e)}; "
                + $"its containers stay frozen there, and a restart of that crestd keeps them frozen. Remove them once {source.Name} answers: "
                + $"crest -r {source.Name} stopp {pod.Id}, then crest -r {source.Name} rmp {pod.Id}; never crest resume them, their copies run on {target.Name}", e);
        }
    }

    /// <summary>
    /// Undoes a failed pod switch so that exactly one copy runs, the source's: when a restore was asked for, every pod
    /// carrying the migration's label is removed from the target first, and the source containers are resumed only once
    /// none is left (else they stay frozen and the message says how to end it by hand). Every source container is
    /// resumed whether or not the freeze answered (one cut off in flight may have frozen them).
    /// </summary>
    private async Task<string> UndoPodAsync(SourcePod pod, FrozenPod? frozen, string? targetToken, string? restoredPod, string? migrationId, string? checkpointImage,
        IReadOnlyList<string> pageClients)
    {
        var problems = new List<string>();
        // A node that did not answer within the wait is not waited for again by the later steps.
        var gone = new HashSet<IMigrationNode>();
        async Task Try(IMigrationNode node, string what, Func<Task> step)
        {
            if (gone.Contains(node))
            {
                problems.Add($"{what}: skipped, {node.Name} did not answer");
                return;
            }

            try
            {
                await WhenAnsweredAsync(node, what, step).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                if (e is NodeUnavailableException)
                {
                    gone.Add(node);
                }

                problems.Add($"{what}: {Describe(e)}");
            }
        }

        if (migrationId is not null && await RemoveTargetPodsAsync(restoredPod, migrationId) is { } unknown)
        {
            return $"undo stopped: {unknown}, and a restored copy of the pod may run there, so the containers of pod {pod.Id} stay frozen on {source.Name} "
                + $"(a restart of that crestd keeps them frozen). End it by hand: list the copy on {target.Name} with crest -r {target.Name} pods "
                + $"(label {MigrationLabels.MigrationId}={migrationId}); if it runs there, keep it and remove the source (crest -r {source.Name} stopp {pod.Id}, then rmp); "
                + $"if there is none (or once you removed it with crest -r {target.Name} stopp ID and rmp ID), crest -r {source.Name} resume each of {string.Join(", ", pod.Containers.Select(c => c.Id))}"
                + (checkpointImage is null ? "" : $"; then crest -r {target.Name} rmi {checkpointImage}");
        }

        foreach (var c in pod.Containers)
        {
            await Try(source, $"resuming {c.Id} on {source.Name}", () => source.ResumeAsync(c.Id, CancellationToken.None)).ConfigureAwait(false);
        }

        if (targetToken is not null)
        {
            await Try(target, $"dropping the pod checkpoint on {target.Name}", () => target.DropArchiveAsync(targetToken, CancellationToken.None)).ConfigureAwait(false);
        }

        foreach (var token in pageClients)
        {
            // Gone with a transfer that ran; dropped here for one that never did.
            await Try(target, $"dropping a page client key pair on {target.Name}", () => target.DropArchiveAsync(token, CancellationToken.None)).ConfigureAwait(false);
        }

        if (checkpointImage is not null)
        {
            await Try(target, $"removing the checkpoint image {checkpointImage} on {target.Name}", () => target.RemoveImageAsync(checkpointImage, CancellationToken.None)).ConfigureAwait(false);
        }

        if (frozen is not null)
        {
            await Try(source, $"dropping the pod checkpoint on {source.Name}", () => source.DropArchiveAsync(frozen.ArchiveToken, CancellationToken.None)).ConfigureAwait(false);
        }

        return problems.Count == 0
            ? $"undone: the pod runs on {source.Name} as before, and nothing of it is left on {target.Name}"
            : $"undo incomplete ({string.Join("; ", problems)}); check both nodes with crest pods and crest ps -a";
    }

    /// <summary>Removes the restored pod (known by id, or found by the migration's label) from the target; null once none is left, else why that is not known.</summary>
    private async Task<string?> RemoveTargetPodsAsync(string? restoredPod, string migrationId)
    {
        var step = $"finding the restored pod on {target.Name}";
        try
        {
            var pods = new List<string>();
            if (restoredPod is not null)
            {
                pods.Add(restoredPod);
            }

            pods.AddRange(await WhenAnsweredAsync(target, step, () => target.FindRestoredPodsAsync(migrationId, CancellationToken.None)).ConfigureAwait(false));
            foreach (var p in pods.Distinct(StringComparer.Ordinal))
            {
                step = $"removing the restored pod {p} on {target.Name}";
                await WhenAnsweredAsync(target, step, () => target.RemovePodAsync(p, CancellationToken.None)).ConfigureAwait(false);
                progress($"undo: removed the restored pod {p} from {target.Name}");
            }

            return null;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return e is NodeUnavailableException
                ? string.Create(CultureInfo.InvariantCulture, $"{target.Name} did not answer within {NodeReturnTimeout.TotalSeconds:0} s ({step}: {Describe(e)})")
                : $"{step} failed: {Describe(e)}";
        }
    }
}
