using System.Security.Cryptography;
using Crest.Core;
using Crest.Runtime;
using Microsoft.Extensions.Logging;

namespace Crest.Checkpoint;

/// <summary>What a migration source's freeze produced: the archive it holds for the target, and how long CRIU took.</summary>
public sealed record MigrationCheckpoint(string ContainerId, string ArchiveToken, long ArchiveBytes, TimeSpan Paused, TimeSpan CriuDump, TimeSpan Total)
{
    /// <summary>Post-copy: the <c>HOST:PORT</c> the source serves the memory from until the target has all of it.</summary>
    public string? PageServer { get; init; }

    /// <summary>Post-copy over TLS: the page server's certificate (PEM), made for this freeze; the target pins it.</summary>
    public string? PageServerCertificate { get; init; }

    /// <summary>The rootfs diff the archive carries (after rounds: only what changed since the last): entries and file bytes.</summary>
    public long RootfsEntries { get; init; }

    public long RootfsBytes { get; init; }
}

/// <summary>An archive a migration's target received: an archive file, or (<paramref name="Unpacked"/>) a checkpoint directory.</summary>
public sealed record ReceivedArchive(string Token, string Path, long Bytes, bool Unpacked);

/// <summary>The log timestamps a migration's downtime is measured from (the runtime stamps each line as the workload writes it).</summary>
public sealed record LogTimes(DateTimeOffset? LastLine, DateTimeOffset? FirstLineAfter);

/// <summary>
/// Both ends of a stop-and-copy live migration on one node. The source: <see cref="PrepareRootfsRoundAsync"/> writes
/// rounds of the running container's rootfs (the target stages them: <see cref="ReceiveRootfsRoundAsync"/>), then <see cref="FreezeAsync"/> checkpoints the
/// container and leaves it frozen, holding the archive under <c>&lt;root&gt;/migrations/</c> until the caller
/// drops it; <see cref="ResumeAsync"/> (the migration failed) or <see cref="KillFrozenAsync"/> (the target runs) ends
/// the freeze. The target: <see cref="ReceiveAsync"/> stores the archive, which CRI CreateContainer then restores
/// from. The orchestration (which node does what, and when) is the client's: see <c>crest migrate</c>.
/// </summary>
public sealed partial class MigrationService(
    CheckpointService checkpoints,
    ContainerService containers,
    CrestPaths paths,
    RestoreOptions restore,
    ICriuProbe criu,
    MigrationNetworkLock networkLock,
    RuntimeLayout layout,
    RootfsStaging rootfsStaging,
    PodCheckpointService podCheckpoints,
    PageTransferIdentities pageTransferIdentities,
    Images.ImageService images,
    TimeProvider time,
    ILogger<MigrationService> logger)
{
    private const string ArchiveSuffix = ".tar";

    /// <summary>Post-copy sources' page servers, by container id: each ends when its target disconnects, or is killed.</summary>
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, LazyCheckpoint> _pageServers = new(StringComparer.Ordinal);

    /// <summary>Where this node keeps migration archives: sent (a frozen source's) and received (a target's).</summary>
    public string ArchiveDir => Path.Combine(paths.Root, "migrations");

    /// <summary>The strategies this node supports, from CRIU's feature check of the kernel.</summary>
    public async Task<IReadOnlyList<MigrationStrategySupport>> CapabilitiesAsync(CancellationToken ct) =>
        MigrationSupport.From(await criu.ProbeAsync(ct).ConfigureAwait(false));

    /// <summary>
    /// The source's switch-over: checkpoint the running container into a fresh archive and leave it frozen. Any
    /// failure resumes it (CheckpointService), so a refused freeze leaves it running as before.
    /// </summary>
    /// <remarks>
    /// With <paramref name="pageServerAddress"/> (post-copy) the archive holds everything but the memory, which CRIU
    /// serves from a page server on that address (a free port is chosen) until the target's lazy-pages daemon has all of
    /// it; the source stays frozen meanwhile, and is resumed or killed as after a stop-copy freeze.
    /// With <paramref name="tcpEstablished"/> CRIU dumps the established TCP connections (<c>--tcp-established</c>), and
    /// the pod's TCP traffic is locked before the dump (<see cref="MigrationNetworkLock"/>) until <see cref="ResumeAsync"/>
    /// or the pod's removal: the target, given the pod's address, takes the connections over.
    /// </remarks>
    /// <remarks>
    /// With <paramref name="rootfsRounds"/> (the token of <see cref="PrepareRootfsRoundAsync"/>) the archive's rootfs diff
    /// holds only what changed since the last round, and names the rounds it sits on; the token is spent by a good freeze.
    /// </remarks>
    /// <remarks>
    /// With <paramref name="pageClientCertificate"/> (the target's, from <see cref="PreparePageClientAsync"/>) the page
    /// server speaks TLS: this node makes a key pair of its own for the freeze, pins that certificate as the only client it
    /// accepts, and answers its own certificate (<see cref="MigrationCheckpoint.PageServerCertificate"/>). The key pair goes
    /// when the page server ends.
    /// </remarks>
    public async Task<MigrationCheckpoint> FreezeAsync(string idOrPrefix, TimeSpan timeout, bool tcpEstablished, CancellationToken ct, string? pageServerAddress = null,
        string? rootfsRounds = null, string? pageClientCertificate = null)
    {
        Directory.CreateDirectory(ArchiveDir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        if (pageServerAddress is not null)
        {
            await RequirePostCopyAsync($"container {idOrPrefix}", ct).ConfigureAwait(false);

            if (pageClientCertificate is not null)
            {
                await pageTransferIdentities.EnsureCriuTlsAsync(ct).ConfigureAwait(false);
            }
        }
        else if (pageClientCertificate is not null)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"container {idOrPrefix}: a page client certificate belongs to a post-copy freeze, which page_server_address asks for");
        }

        PageTransferIdentity? identity = null;
        PageTransferTls? tls = null;
        if (pageClientCertificate is not null)
        {
            identity = pageTransferIdentities.Create(time);
            try
            {
                tls = pageTransferIdentities.Pin(identity.Token, pageClientCertificate);
            }
            catch
            {
                pageTransferIdentities.Remove(identity.Token);
                throw;
            }
        }

        try
        {
            return await FreezeWithAsync(idOrPrefix, timeout, tcpEstablished, pageServerAddress, rootfsRounds, identity, tls, ct).ConfigureAwait(false);
        }
        catch
        {
            if (identity is not null)
            {
                pageTransferIdentities.Remove(identity.Token);
            }

            throw;
        }
    }

    private async Task<MigrationCheckpoint> FreezeWithAsync(string idOrPrefix, TimeSpan timeout, bool tcpEstablished, string? pageServerAddress, string? rootfsRounds,
        PageTransferIdentity? identity, PageTransferTls? tls, CancellationToken ct)
    {

        var pageServer = pageServerAddress is null ? null : FreePageServerEndpoint(pageServerAddress);
        var token = NewToken();
        var location = ArchivePath(token);
        CheckpointResult result;
        RootfsRoundsSent? sent = null;
        RootfsDelta? delta = null;
        if (rootfsRounds is not null)
        {
            var c = await containers.GetAsync(idOrPrefix, ct).ConfigureAwait(false);
            sent = RoundsSent(rootfsRounds, c.Id);
            await sent.Turn.WaitAsync(ct).ConfigureAwait(false);
            if (sent.Baseline is not { } baseline)
            {
                sent.Turn.Release();
                throw new CrestException(ErrorKind.FailedPrecondition, $"rootfs rounds {rootfsRounds} of container {c.Id} have no finished round yet; freeze without them, or after a round");
            }

            delta = new RootfsDelta(baseline, [.. sent.Rounds]);
        }

        try
        {
            if (!tcpEstablished)
            {
                result = await checkpoints.CheckpointAsync(idOrPrefix, location, timeout, ct, leaveFrozen: true, lazyPageServer: pageServer, rootfsDelta: delta, holdWork: pageServer is null, pageServerTls: tls).ConfigureAwait(false);
            }
            else
            {
                var container = await containers.GetAsync(idOrPrefix, ct).ConfigureAwait(false);
                await networkLock.LockAsync(container, ct).ConfigureAwait(false);
                try
                {
                    result = await checkpoints.CheckpointAsync(container.Id, location, timeout, ct, leaveFrozen: true, lazyPageServer: pageServer, tcpEstablished: true, rootfsDelta: delta, holdWork: pageServer is null, pageServerTls: tls).ConfigureAwait(false);
                }
                catch
                {
                    // The checkpoint resumed the container: it runs on, with its network.
                    await networkLock.UnlockAsync(container.Id, CancellationToken.None).ConfigureAwait(false);
                    throw;
                }
            }

            if (rootfsRounds is not null)
            {
                // Spent: the archive names the rounds, and nothing compares against them again.
                _rootfsRounds.TryRemove(rootfsRounds, out _);
            }
        }
        finally
        {
            sent?.Turn.Release();
        }

        if (result.PageServer is { } served)
        {
            // Its archive was written while frozen: the work directory goes with the page server.
            ServePages(result.ContainerId, served, identity, removeWork: true);
        }

        if (result.HeldWork is { } work)
        {
            // A stop-copy freeze keeps CRIU's work directory (a tmpfs when it fit in memory) and streams the archive from
            // it. Without its record nothing could find it again: it goes, and the freeze fails (the client resumes).
            try
            {
                await File.WriteAllTextAsync(HeldWorkRecord(token), work, CancellationToken.None).ConfigureAwait(false);
            }
            catch
            {
                File.Delete(HeldWorkRecord(token));
                containers.RemoveCheckpointWork(work);
                throw;
            }
        }

        CheckpointLog.MigrationFrozen(logger, result.ContainerId, result.ArchiveBytes, (long)result.Total.TotalMilliseconds);
        CrashPoints.Hit(CrashPoints.MigrationSourceFrozen);
        // Frozen from the pause until now: the dump (and, post-copy, the small archive written while it stayed frozen).
        return new MigrationCheckpoint(result.ContainerId, token, result.ArchiveBytes, result.Total, result.CriuDump, result.Total)
        {
            PageServer = result.PageServer?.PageServer,
            PageServerCertificate = identity?.Certificate,
            RootfsEntries = result.RootfsEntries,
            RootfsBytes = result.RootfsBytes,
        };
    }

    /// <summary>Fails unless this node can be a post-copy source (CRIU's feature check of the kernel), naming <paramref name="what"/>.</summary>
    private async Task RequirePostCopyAsync(string what, CancellationToken ct)
    {
        var probe = await criu.ProbeAsync(ct).ConfigureAwait(false);
        if (MigrationSupport.From(probe).FirstOrDefault(s => s.Strategy == "post-copy") is { Supported: false, Reason: var reason })
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"{what} cannot be migrated post-copy from this node: {reason}");
        }
    }

    /// <summary>
    /// Keeps a post-copy source's page server for <see cref="ResumeAsync"/> and <see cref="KillFrozenAsync"/>. When it
    /// ends, its key pair goes (it served its one connection, or none when killed), and with <paramref name="removeWork"/>
    /// its work directory (a held pod checkpoint's is DropArchive's).
    /// </summary>
    private void ServePages(string containerId, LazyCheckpoint served, PageTransferIdentity? identity, bool removeWork)
    {
        _pageServers[containerId] = served;
        _ = served.Exit.ContinueWith(_ =>
        {
            if (removeWork)
            {
                containers.RemoveCheckpointWork(served.WorkPath);
            }

            if (identity is not null)
            {
                pageTransferIdentities.Remove(identity.Token);
            }
        }, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
    }

    /// <summary>
    /// The migration failed: the frozen source runs on (a container not frozen is left as it is) and its migration hold
    /// ends. A post-copy source's page server is killed first: its CRIU holds the processes until it ends (one that an
    /// earlier crestd left is found through the hold, <see cref="ContainerService.ThawAsync"/>).
    /// </summary>
    public async Task ResumeAsync(string idOrPrefix, CancellationToken ct)
    {
        var c = await containers.GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        if (_pageServers.TryRemove(c.Id, out var served))
        {
            await served.KillAsync().ConfigureAwait(false);
        }

        await containers.ThawAsync(c.Id, ct).ConfigureAwait(false);
        // A freeze that moved TCP connections locked the pod's network; lifted whether or not the freeze answered.
        await networkLock.UnlockAsync(c.Id, ct).ConfigureAwait(false);
        // The checkpoint a stop-copy freeze held for the target (in memory when it fit) is of no use once it runs on.
        DropHeldCheckpointsOf(c.Id);
        CheckpointLog.MigrationSourceResumed(logger, c.Id);
    }

    /// <summary>Drops every held checkpoint of container <paramref name="containerId"/> (a resume by hand leaves no token to drop).</summary>
    private void DropHeldCheckpointsOf(string containerId)
    {
        if (!Directory.Exists(ArchiveDir))
        {
            return;
        }

        var containerDir = Path.Combine(paths.Containers, containerId) + "/";
        foreach (var record in Directory.EnumerateFiles(ArchiveDir, "*" + HeldWorkSuffix))
        {
            if (File.ReadAllText(record).Trim().StartsWith(containerDir, StringComparison.Ordinal))
            {
                DropArchive(Path.GetFileNameWithoutExtension(record));
            }
        }

        // A pod freeze's checkpoint is of no use once one of its containers runs on: the pod moves whole or not at all.
        foreach (var token in PodCheckpointsHolding(containerId))
        {
            DropArchive(token);
        }
    }

    /// <summary>
    /// The target runs: the frozen source is killed without running on; the caller removes it through CRI. A post-copy
    /// source's page server has ended by now (the target had every page); one still running is killed once the
    /// container is frozen again, before the kill.
    /// </summary>
    public async Task KillFrozenAsync(string idOrPrefix, CancellationToken ct)
    {
        var c = await containers.GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        CrashPoints.Hit(CrashPoints.MigrationSourceKilling);
        if (!_pageServers.TryRemove(c.Id, out var served))
        {
            await containers.KillFrozenAsync(c.Id, ct).ConfigureAwait(false);
            return;
        }

        // CRIU may have let the freezer go while it serves (its ptrace holds the processes): it goes once they are frozen again.
        await containers.KillFrozenAsync(c.Id, ct, served.KillAsync).ConfigureAwait(false);
        await served.KillAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// A post-copy target, before the source freezes: a fresh key pair and self-signed certificate for the
    /// <c>criu lazy-pages</c> that will fetch the memory over TLS. The certificate goes to the source (Freeze), the key
    /// stays here; the restore that names the token takes it over and removes it when its transfer ends, and
    /// <see cref="DropArchive"/> of the token removes it before that.
    /// </summary>
    public async Task<PageTransferIdentity> PreparePageClientAsync(CancellationToken ct)
    {
        await pageTransferIdentities.EnsureCriuTlsAsync(ct).ConfigureAwait(false);
        var identity = pageTransferIdentities.Create(time);
        CheckpointLog.PageClientPrepared(logger, identity.Token);
        return identity;
    }

    /// <summary>A post-copy target's transfer: pages so far, or (with <paramref name="wait"/>) how it ended; null when the container has none.</summary>
    public Task<LazyPagesState?> LazyPagesAsync(string idOrPrefix, bool wait, CancellationToken ct) => containers.LazyPagesStateAsync(idOrPrefix, wait, ct);

    /// <summary>An <c>ADDRESS:PORT</c> with a port free on <paramref name="address"/> now (the page server binds it next).</summary>
    private static string FreePageServerEndpoint(string address)
    {
        if (!System.Net.IPAddress.TryParse(address, out var ip))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"post-copy page server address \"{address}\" is not an IP address of this node");
        }

        var probe = new System.Net.Sockets.TcpListener(ip, 0);
        probe.Start();
        var port = ((System.Net.IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        return ip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{ip}]:{port}" : $"{ip}:{port}";
    }

    /// <summary>Removes archives and staged rootfs rounds a crashed or abandoned migration left (at start, before serving).</summary>
    public int SweepArchives()
    {
        if (!Directory.Exists(ArchiveDir))
        {
            return 0;
        }

        var removed = rootfsStaging.Sweep() + SweepPodCheckpoints() + pageTransferIdentities.Sweep();
        // A held work directory itself went with its container's recovery, which runs first.
        foreach (var file in Directory.EnumerateFiles(ArchiveDir, "*" + ArchiveSuffix).Concat(Directory.EnumerateFiles(ArchiveDir, "*" + HeldWorkSuffix)))
        {
            File.Delete(file);
            removed++;
        }

        return removed;
    }

    private string ArchivePath(string token)
    {
        if (token.Length != 24 || !token.All(char.IsAsciiHexDigitLower))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"migration archive token \"{token}\" is not one this node handed out (24 lowercase hex digits)");
        }

        return Path.Combine(ArchiveDir, token + ArchiveSuffix);
    }

    private static string NewToken() => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(12));
}
