using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Linux;
using Crest.Runtime;

namespace Crest.Checkpoint;

/// <summary>What a whole-pod migration's source froze: the pod checkpoint it holds, and the containers it holds frozen.</summary>
public sealed record MigrationPodCheckpoint(string SandboxId, string ArchiveToken, IReadOnlyList<string> ContainerIds, long Bytes, TimeSpan Paused, TimeSpan Total)
{
    /// <summary>The rootfs diffs written while frozen, over every container: entries and file bytes (after rounds: only what changed since the last).</summary>
    public long RootfsEntries { get; init; }

    public long RootfsBytes { get; init; }

    /// <summary>Post-copy: each container's page server, by container id, serving its memory until the target has all of it.</summary>
    public IReadOnlyDictionary<string, MigrationPageServer> PageServers { get; init; } = new Dictionary<string, MigrationPageServer>();
}

/// <summary>A post-copy source's page server: the <c>HOST:PORT</c> it listens on, and its certificate (PEM) when it speaks TLS.</summary>
public sealed record MigrationPageServer(string Endpoint, string? Certificate);

// The source of a whole-pod migration: the pod checkpoint (CheckpointPod's) with a third end state, every container
// left frozen and held (post-copy: each container dumped without its memory, which a page server of its own serves). As a container's stop-copy freeze does, it writes no archive: the pod's files and
// pod.json are kept under <root>/migrations/<token>.pod, each container's CRIU work directory (a tmpfs when it fit in
// memory) is held where CRIU wrote it, named by <token>.podwork, until DropArchive. ReadArchive streams them as one pod
// checkpoint tar, each container's archive made inside it as it goes, which the target's RestorePod reads as any
// pod checkpoint tar.
public sealed partial class MigrationService
{
    private const string PodSuffix = ".pod";

    private const string PodHeldWorkSuffix = ".podwork";

    /// <summary>
    /// Checkpoints every container of a ready pod at one instant and leaves them all frozen, each with a migration hold
    /// (so a crestd restart keeps them frozen), holding the pod checkpoint for <see cref="SendArchiveAsync"/>. A failure
    /// up to the dump resumes every container, and nothing is left; one after it (the held work could not be recorded)
    /// leaves them frozen and held, and nothing else, for the client's Resume of each. <paramref name="timeout"/> (zero: none of its own) bounds
    /// the whole checkpoint. <paramref name="rootfsRounds"/> names, by container id, the rootfs rounds
    /// (<see cref="PrepareRootfsRoundAsync"/>) staged on the target for it: that container's rootfs diff then holds only what
    /// changed since its last round, as a container's freeze with rounds does; the tokens are spent by a good freeze.
    /// With <paramref name="tcpEstablished"/> the pod's TCP traffic is locked before the dump (<see cref="MigrationNetworkLock"/>),
    /// every container's established connections are dumped, and the lock stays until the containers resume or the pod goes.
    /// With <paramref name="pageServerAddress"/> (post-copy) each container's checkpoint leaves its memory out, and a page
    /// server of its own on that address serves it until the target's lazy-pages daemon for that container has all of it,
    /// as a container's post-copy freeze does (<see cref="FreezeAsync"/>); <paramref name="pageClientCertificates"/>, by
    /// container id, makes each page server speak TLS and accept only that certificate's key (every container needs one,
    /// or none does). <see cref="ResumeAsync"/> and <see cref="KillFrozenAsync"/> of a container end its page server.
    /// </summary>
    public async Task<MigrationPodCheckpoint> FreezePodAsync(string sandboxId, TimeSpan timeout, CancellationToken ct, IReadOnlyDictionary<string, string>? rootfsRounds = null,
        bool tcpEstablished = false, string? pageServerAddress = null, IReadOnlyDictionary<string, string>? pageClientCertificates = null)
    {
        pageClientCertificates ??= new Dictionary<string, string>();
        if (pageServerAddress is null && pageClientCertificates.Count > 0)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"pod sandbox {sandboxId}: page client certificates belong to a post-copy freeze, which page_server_address asks for");
        }

        var identities = new Dictionary<string, PageTransferIdentity>(StringComparer.Ordinal);
        var servers = new Dictionary<string, LazyDumpTarget>(StringComparer.Ordinal);
        try
        {
            if (pageServerAddress is not null)
            {
                await PreparePodPageServersAsync(sandboxId, pageServerAddress, pageClientCertificates, servers, identities, ct).ConfigureAwait(false);
            }

            var frozen = await FreezePodWithAsync(sandboxId, timeout, rootfsRounds, tcpEstablished, servers, identities, ct).ConfigureAwait(false);
            return frozen with
            {
                PageServers = servers.ToDictionary(s => s.Key, s => new MigrationPageServer(s.Value.Endpoint, identities.GetValueOrDefault(s.Key)?.Certificate), StringComparer.Ordinal),
            };
        }
        catch
        {
            foreach (var identity in identities.Values)
            {
                pageTransferIdentities.Remove(identity.Token);
            }

            throw;
        }
    }

    /// <summary>
    /// Post-copy: a free port on <paramref name="address"/> for every running container of the pod and, with
    /// certificates, a key pair of this node's pinning that container's client (into <paramref name="identities"/>, which
    /// the caller removes on failure).
    /// </summary>
    private async Task PreparePodPageServersAsync(string sandboxId, string address, IReadOnlyDictionary<string, string> certificates,
        Dictionary<string, LazyDumpTarget> servers, Dictionary<string, PageTransferIdentity> identities, CancellationToken ct)
    {
        await RequirePostCopyAsync($"pod sandbox {sandboxId}", ct).ConfigureAwait(false);

        var running = (await containers.ListAsync(ct).ConfigureAwait(false)).Where(c => c.SandboxId == sandboxId && c.State == ContainerState.Running).Select(c => c.Id).ToList();
        if (certificates.Keys.FirstOrDefault(id => !running.Contains(id, StringComparer.Ordinal)) is { } stray)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"a page client certificate was given for container {stray}, which is not a running container of pod sandbox {sandboxId} (it stopped?); migrate the pod again");
        }

        if (certificates.Count > 0 && running.FirstOrDefault(id => !certificates.ContainsKey(id)) is { } bare)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {bare} of pod sandbox {sandboxId} has no page client certificate (it started after the migration looked at the pod?): over TLS every container's page server needs its client's; migrate the pod again");
        }

        if (certificates.Count > 0)
        {
            await pageTransferIdentities.EnsureCriuTlsAsync(ct).ConfigureAwait(false);
        }

        foreach (var id in running)
        {
            PageTransferTls? tls = null;
            if (certificates.TryGetValue(id, out var certificate))
            {
                var identity = pageTransferIdentities.Create(time);
                identities[id] = identity;
                tls = pageTransferIdentities.Pin(identity.Token, certificate);
            }

            // Each port is probed free and released: one handed out twice in a row would be a collision.
            var endpoint = FreePageServerEndpoint(address);
            while (servers.Values.Any(s => s.Endpoint == endpoint))
            {
                endpoint = FreePageServerEndpoint(address);
            }

            servers[id] = new LazyDumpTarget(endpoint, tls);
        }
    }

    private async Task<MigrationPodCheckpoint> FreezePodWithAsync(string sandboxId, TimeSpan timeout, IReadOnlyDictionary<string, string>? rootfsRounds, bool tcpEstablished,
        IReadOnlyDictionary<string, LazyDumpTarget> pageServers, IReadOnlyDictionary<string, PageTransferIdentity> identities, CancellationToken ct)
    {
        Directory.CreateDirectory(ArchiveDir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var token = NewToken();
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        if (timeout > TimeSpan.Zero)
        {
            deadline.CancelAfter(timeout);
        }

        PodCheckpointResult result;
        var deltas = new Dictionary<string, RootfsDelta>(StringComparer.Ordinal);
        var turns = new List<RootfsRoundsSent>();
        try
        {
            foreach (var (id, roundsToken) in rootfsRounds ?? new Dictionary<string, string>())
            {
                var c = await containers.GetAsync(id, ct).ConfigureAwait(false);
                var sent = RoundsSent(roundsToken, c.Id);
                // Held until the freeze ends, as a container's freeze holds it: no round of these runs meanwhile.
                await sent.Turn.WaitAsync(ct).ConfigureAwait(false);
                turns.Add(sent);
                if (sent.Baseline is not { } baseline)
                {
                    throw new CrestException(ErrorKind.FailedPrecondition, $"rootfs rounds {roundsToken} of container {c.Id} have no finished round yet; freeze the pod without them, or after a round");
                }

                deltas[c.Id] = new RootfsDelta(baseline, [.. sent.Rounds]);
            }

            var request = new PodCheckpointRequest
            {
                SandboxId = sandboxId,
                OutputPath = PodCheckpointPath(token),
                HoldFrozen = true,
                RootfsDeltas = deltas,
                PageServers = pageServers,
                Options = tcpEstablished
                    ? new Dictionary<string, string>(StringComparer.Ordinal) { [PodCheckpointService.TcpEstablishedOption] = "true" }
                    : new Dictionary<string, string>(StringComparer.Ordinal),
            };
            if (!tcpEstablished)
            {
                result = await podCheckpoints.CheckpointAsync(request, deadline.Token).ConfigureAwait(false);
            }
            else
            {
                var locked = await networkLock.LockPodAsync(sandboxId, deadline.Token).ConfigureAwait(false);
                try
                {
                    result = await podCheckpoints.CheckpointAsync(request, deadline.Token).ConfigureAwait(false);
                }
                catch
                {
                    // The checkpoint resumed every container: they run on, with their network.
                    await networkLock.UnlockAsync(locked, CancellationToken.None).ConfigureAwait(false);
                    throw;
                }
            }

            // Spent: each checkpoint names its rounds, and nothing compares against them again.
            foreach (var roundsToken in (rootfsRounds ?? new Dictionary<string, string>()).Values)
            {
                _rootfsRounds.TryRemove(roundsToken, out _);
            }
        }
        finally
        {
            foreach (var sent in turns)
            {
                sent.Turn.Release();
            }
        }

        try
        {
            // Without its record nothing could find the held work directories again: they go, and the freeze fails (the client resumes).
            var lines = result.HeldWork!.Select(kv => kv.Key + "\t" + kv.Value);
            await File.WriteAllLinesAsync(PodHeldWorkRecord(token), lines, CancellationToken.None).ConfigureAwait(false);
        }
        catch
        {
            try
            {
                // The page servers go first (each holds its container through CRIU); the containers stay frozen and held
                // until the client's undo resumes each.
                foreach (var served in result.PageServers.Values)
                {
                    await served.KillAsync().ConfigureAwait(false);
                }
            }
            finally
            {
                FileKinds.Remove(PodHeldWorkRecord(token));
                FileKinds.Remove(PodCheckpointPath(token));
                foreach (var work in result.HeldWork!.Values)
                {
                    containers.RemoveCheckpointWork(work);
                }
            }

            throw;
        }

        foreach (var (id, served) in result.PageServers)
        {
            // Its work directory is the held pod checkpoint's, which DropArchive removes.
            ServePages(id, served, identities.GetValueOrDefault(id), removeWork: false);
        }

        CheckpointLog.MigrationPodFrozen(logger, result.SandboxId, result.Containers.Count, result.Bytes, (long)result.Total.TotalMilliseconds);
        CrashPoints.Hit(CrashPoints.MigrationPodFrozen);
        return new MigrationPodCheckpoint(result.SandboxId, token, [.. result.Containers.Select(c => c.Id)], result.Bytes, result.Total, result.Total)
        {
            RootfsEntries = result.RootfsEntries,
            RootfsBytes = result.RootfsBytes,
        };
    }

    /// <summary>The held pod checkpoint of <paramref name="token"/> (checked like any archive token).</summary>
    private string PodCheckpointPath(string token) => Path.ChangeExtension(ArchivePath(token), PodSuffix);

    /// <summary>The record of the container work directories a pod freeze holds: one line per container, its name, a tab, the directory.</summary>
    private string PodHeldWorkRecord(string token) => Path.ChangeExtension(ArchivePath(token), PodHeldWorkSuffix);

    /// <summary>
    /// Streams a held pod checkpoint as one plain tar, made as it goes: the pod's files, then each container's archive
    /// (<c>containers/NAME.tar</c>) made from its held work directory inside the tar; false when the token names none.
    /// </summary>
    private async Task<bool> SendPodCheckpointAsync(string token, Stream output, CancellationToken ct)
    {
        var dir = PodCheckpointPath(token);
        if (!FileKinds.IsDirectory(dir))
        {
            return false;
        }

        // Each container archive's size as the freeze measured it (pod.json): not measured again here, and a work
        // directory that changed since breaks the stream off when its archive's length differs.
        // This node wrote it; its container archives are made below, so the files are not checked (Parse with no directory).
        var manifest = PodCheckpointManifests.Parse(await File.ReadAllBytesAsync(Path.Combine(dir, PodCheckpointFiles.Manifest), ct).ConfigureAwait(false), null);
        var nested = new List<NestedArchive>();
        foreach (var (name, work) in HeldPodWork(token))
        {
            if (!PodCheckpointFiles.IsValidContainerName(name) || !IsCheckpointWork(work) || FileKinds.IsSymlink(work) || !Directory.Exists(work)
                || manifest.Containers.FirstOrDefault(c => c.Name == name) is not { } recorded)
            {
                throw new CrestException(ErrorKind.NotFound, $"the checkpoint of container {name} behind migration archive {token} is gone ({work}); freeze the pod again");
            }

            nested.Add(new NestedArchive(PodCheckpointFiles.ContainerArchive(name), work, recorded.ArchiveBytes));
        }

        await CheckpointArchive.WriteAsync(dir, output, ArchiveCompression.None, ct, nested).ConfigureAwait(false);
        return true;
    }

    /// <summary>The held work directories a pod freeze recorded, by container name (none when there is no record).</summary>
    private List<(string Name, string Work)> HeldPodWork(string token)
    {
        var record = PodHeldWorkRecord(token);
        if (!File.Exists(record))
        {
            return [];
        }

        return [.. File.ReadAllLines(record).Where(l => l.Length > 0).Select(l => l.Split('\t', 2)).Select(p => (p[0], p.Length > 1 ? p[1] : ""))];
    }

    /// <summary>Removes a held pod checkpoint: its directory, and the container work directories its record names.</summary>
    private void DropPodCheckpoint(string token)
    {
        FileKinds.Remove(PodCheckpointPath(token));
        foreach (var (_, work) in HeldPodWork(token))
        {
            if (IsCheckpointWork(work))
            {
                containers.RemoveCheckpointWork(work);
            }
        }

        FileKinds.Remove(PodHeldWorkRecord(token));
    }

    /// <summary>The tokens of the held pod checkpoints that hold a work directory of container <paramref name="containerId"/>.</summary>
    private List<string> PodCheckpointsHolding(string containerId)
    {
        var containerDir = Path.Combine(paths.Containers, containerId) + "/";
        return Directory.EnumerateFiles(ArchiveDir, "*" + PodHeldWorkSuffix)
            .Select(Path.GetFileNameWithoutExtension)
            .OfType<string>()
            .Where(token => HeldPodWork(token).Any(h => h.Work.StartsWith(containerDir, StringComparison.Ordinal)))
            .ToList();
    }

    /// <summary>Removes the held pod checkpoints (at start: the containers they froze stay frozen until the client ends them; their work directories went with the containers' recovery).</summary>
    private int SweepPodCheckpoints()
    {
        var removed = 0;
        foreach (var dir in Directory.EnumerateDirectories(ArchiveDir, "*" + PodSuffix))
        {
            FileKinds.Remove(dir);
            removed++;
        }

        foreach (var record in Directory.EnumerateFiles(ArchiveDir, "*" + PodHeldWorkSuffix))
        {
            File.Delete(record);
            removed++;
        }

        return removed;
    }
}
