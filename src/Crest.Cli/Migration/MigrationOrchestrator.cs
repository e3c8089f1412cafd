using System.Globalization;
using System.Runtime.CompilerServices;
using System.Threading.Channels;

namespace Crest.Cli.Migration;

/// <summary>
/// Drives a stop-and-copy live migration between two nodes, in this order:
/// <list type="number">
/// <item>check both nodes support the strategy; inspect the running source container;</item>
/// <item>pre-stage while it runs: the target pulls the base image by digest, the target pod is checked or made, and the
/// rootfs moves in rounds (all of it, then what changed since the last round, until a round is small);</item>
/// <item>freeze: the source checkpoints the container and keeps it frozen (nothing runs on past the checkpoint); its
/// rootfs diff holds only what changed since the last round;</item>
/// <item>transfer: the archive streams from the source through this client to the target;</item>
/// <item>restore on the target (CreateContainer from the archive, StartContainer) and check it runs;</item>
/// <item>post-copy only: wait until the target's lazy-pages daemon has fetched every page from the source's page server;</item>
/// <item>only then kill the frozen source and remove it.</item>
/// </list>
/// Post-copy moves the same steps, but the archive leaves the memory out: the target runs at once and faults it in
/// from the source's page server, and the source stays frozen (its memory whole) until the last page arrived. If the
/// transfer breaks, the target's watchdog kills its copy (unfetched pages would read as zeros) and the source resumes.
/// Any failure before the last step removes what was made on the target and resumes the source, so exactly one copy
/// runs whatever failed; a node whose crestd restarts meanwhile is waited for (MigrationOrchestrator.Ending.cs). The downtime is measured from the container's CRI log: the source's last line to the target's
/// first new one.
/// </summary>
internal sealed partial class MigrationOrchestrator(IMigrationNode source, IMigrationNode target, Action<string> progress, TimeProvider time)
{
    /// <summary>How long the target's first log line is awaited for the downtime measurement.</summary>
    internal static readonly TimeSpan Settle = TimeSpan.FromSeconds(5);

    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(50);

    public async Task<MigrationReport> RunAsync(MigrationRequest request, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(request);
        var started = time.GetTimestamp();
        CheckKeepAddress(request);
        var via = CheckVia(request.Via);
        await CheckStrategyAsync(request.Strategy, ct).ConfigureAwait(false);

        var container = await source.InspectAsync(request.ContainerId, ct).ConfigureAwait(false);
        progress($"source: container {container.Id} ({container.Name}) runs in pod {container.PodId} on {source.Name}");

        // Pre-staging: everything that is not the container's state moves while it still runs.
        long before = 0;
        if (container.BaseImageDigestReference is { } digestRef)
        {
            progress($"pre-stage: {target.Name} pulls the base image {digestRef}");
            before += await target.PullImageAsync(digestRef, ct).ConfigureAwait(false);
        }
        else
        {
            progress($"pre-stage: base image {container.Image} has no registry digest; {target.Name} must already hold it (the restore checks it)");
        }

        string podId;
        var madePod = false;
        if (request.TargetPodId is { } existing)
        {
            await target.CheckPodAsync(existing, ct).ConfigureAwait(false);
            podId = existing;
        }
        else
        {
            var podConfig = request.TargetPodConfig ?? throw new CliUsageException("migrate needs --pod POD or --pod-config pod.json on the target");
            podId = await target.RunPodAsync(request.KeepAddress ? WithSourceAddress(podConfig, container) : podConfig, ct).ConfigureAwait(false);
            madePod = true;
            progress($"pre-stage: made pod {podId} on {target.Name}");
        }

        FrozenSource? frozen = null;
        string? targetToken = null;
        string? restored = null;
        // Labels the restored container: a restore whose answer is lost is found on the target by it (UndoAsync).
        var migrationId = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8));
        var restoreSent = false;
        var postCopy = request.Strategy == MigrationStrategy.PostCopy;
        var switchStarted = time.GetTimestamp();
        TimeSpan frozenFor = default;
        TimeSpan? pageTransfer = null;
        long bytesAfter = 0;
        long archiveBytes = 0;
        var rootfs = new RootfsPreStaging();
        PageClientIdentity? pageClient = null;
        // Through a registry (--via): the checkpoint image, named in the report and in a failure's message.
        var hop = new RegistryHop();
        try
        {
            if (request.KeepAddress)
            {
                await ExpectSourceAddressAsync(podId, container, ct).ConfigureAwait(false);
            }

            // Before the switch's clock starts: the container still runs.
            if (postCopy && request.PageServerTls)
            {
                // The target's key pair is made there and stays there; only its certificate travels, to the source.
                pageClient = await target.PreparePageClientAsync(ct).ConfigureAwait(false);
                progress($"pre-stage: {target.Name} made a key pair for fetching the memory over TLS; the source's page server will accept only its certificate");
            }

            if (via is not null)
            {
                // Before the freeze: a source that cannot push would otherwise be found out with the container frozen.
                await source.CheckPublishAsync(ct).ConfigureAwait(false);
            }

            if (request.RootfsRounds && via is null)
            {
                await StageRootfsAsync(container.Id, rootfs, ct).ConfigureAwait(false);
            }
            else if (via is not null)
            {
                progress(NoRoundsThroughRegistry);
            }

            before += rootfs.BytesSent;
            switchStarted = time.GetTimestamp();

            progress(postCopy
                ? $"freeze: checkpointing {container.Id} on {source.Name} without its memory, which a page server on {request.PageServerAddress} serves; it stays frozen until the target has all of it"
                : $"freeze: checkpointing {container.Id} on {source.Name}; it stays frozen until the target runs");
            frozen = await source.FreezeAsync(container.Id, request.FreezeTimeoutSeconds, postCopy ? request.PageServerAddress : null, request.KeepAddress, rootfs.SourceToken,
                pageClient?.Certificate, ct).ConfigureAwait(false);
            if (postCopy && frozen.PageServer is null)
            {
                throw new InvalidOperationException($"{source.Name} froze the container but named no page server for its memory");
            }

            if (pageClient is not null && frozen.PageServerCertificate is null)
            {
                // A crestd that predates TLS page servers ignores the certificate and would serve the memory in the clear.
                throw new InvalidOperationException($"{source.Name} froze the container but answered no page server certificate, so its page server would not use TLS "
                    + "(its crestd predates TLS page servers); upgrade it, or migrate with --no-page-server-tls");
            }

            progress((frozen.ArchiveBytes > 0
                    ? string.Create(CultureInfo.InvariantCulture, $"freeze: archive of {frozen.ArchiveBytes} bytes ready, {frozen.Paused.TotalMilliseconds:0} ms after the freeze began")
                    : string.Create(CultureInfo.InvariantCulture, $"freeze: checkpoint ready {frozen.Paused.TotalMilliseconds:0} ms after the freeze began (its archive is made as it streams)"))
                + string.Create(CultureInfo.InvariantCulture, $"; rootfs in the frozen window: {frozen.RootfsEntries} entries, {frozen.RootfsBytes} bytes")
                + (rootfs.Rounds.Count > 0 ? string.Create(CultureInfo.InvariantCulture, $" (the rest came in {rootfs.Rounds.Count} rounds before it)") : "")
                + (postCopy ? $"; memory served from {frozen.PageServer}" + (pageClient is null ? " in the clear" : " over TLS") : ""));

            string path;
            if (via is not null)
            {
                archiveBytes = await CarryThroughRegistryAsync(frozen.ArchiveToken, via, migrationId, hop, ct).ConfigureAwait(false);
                path = hop.Image!;
            }
            else
            {
                var relayed = new RelayCount();
                var trailer = new ArchiveTrailer();
                (targetToken, path, var bytes) = await target.WriteArchiveAsync(Counted(ReadAhead(source.ReadArchiveAsync(frozen.ArchiveToken, trailer, ct), ct), relayed, ct), unpack: true, trailer, ct).ConfigureAwait(false);
                // A streamed archive's size is known once it was sent (0 from the freeze).
                var sent = frozen.ArchiveBytes > 0 ? frozen.ArchiveBytes : relayed.Bytes;
                if (bytes != sent)
                {
                    throw new InvalidOperationException($"the target received {bytes} bytes of the checkpoint archive, the source sent {sent}");
                }

                archiveBytes = bytes;
                progress(string.Create(CultureInfo.InvariantCulture, $"transfer: {bytes} bytes to {target.Name}"));
            }

            restoreSent = true;
            var lazyPages = postCopy ? new LazyPagesSource(frozen.PageServer!, frozen.PageServerCertificate, pageClient?.Token) : null;
            restored = await target.RestoreAsync(podId, path, Labelled(container, migrationId), lazyPages, rootfs.TargetToken, ct).ConfigureAwait(false);
            progress($"restore: container {restored} started in pod {podId} on {target.Name}");
            await ExpectRunningAsync(restored, ct).ConfigureAwait(false);
            frozenFor = time.GetElapsedTime(switchStarted);
            if (postCopy)
            {
                var transfer = time.GetTimestamp();
                var pages = await AwaitPagesAsync([restored], request.PageTransferTimeout, ct).ConfigureAwait(false);
                pageTransfer = time.GetElapsedTime(transfer);
                bytesAfter = pages * PageSize;
                progress(string.Create(CultureInfo.InvariantCulture, $"post-copy: all {pages} pages ({bytesAfter} bytes) arrived, {pageTransfer.Value.TotalMilliseconds:0} ms after the target started"));
            }
        }
        catch (Exception e)
        {
            var undo = await UndoAsync(new SwitchState(container.Id, frozen, targetToken, restored, restoreSent ? migrationId : null, madePod ? podId : null)
            {
                PageClient = pageClient?.Token,
                CheckpointImage = hop.Image,
            }).ConfigureAwait(false);
            var rootfsUndo = await DropRootfsRoundsAsync(rootfs).ConfigureAwait(false);
            throw new MigrationFailedException(
                $"migration of container {container.Id} from {source.Name} to {target.Name} failed: {Describe(e)}; {undo}" + (rootfsUndo is null ? "" : $" ({rootfsUndo})") + hop.LeftInRegistry, e);
        }

        // The target runs with all its state: the source must never run again.
        var lastSource = await EndSourceAsync(container, restored!, request.KeepAddress).ConfigureAwait(false);
        await DropArchiveAsync(source, frozen.ArchiveToken).ConfigureAwait(false);
        if (targetToken is not null)
        {
            await DropArchiveAsync(target, targetToken).ConfigureAwait(false);
        }

        if (hop.Image is not null)
        {
            await RemoveCheckpointImageAsync(hop.Image).ConfigureAwait(false);
        }
        if (pageClient is not null)
        {
            // Gone already with the transfer; dropped in case that crestd restarted meanwhile.
            await DropArchiveAsync(target, pageClient.Token).ConfigureAwait(false);
        }

        progress($"done: removed {container.Id} from {source.Name}");

        var firstTarget = lastSource is null ? null : await FirstTargetLineOrUnknownAsync(restored!, lastSource.Value, ct).ConfigureAwait(false);
        return new MigrationReport(container.Id, restored!, podId, request.Strategy, before, archiveBytes, frozenFor,
            firstTarget - lastSource, lastSource, firstTarget, time.GetElapsedTime(started))
        {
            BytesAfterSwitch = bytesAfter,
            PageTransfer = pageTransfer,
            RootfsRounds = rootfs.Rounds,
            FrozenRootfsBytes = frozen.RootfsBytes,
            CheckpointImage = hop.Image,
        };
    }

    private const string NoRoundsThroughRegistry = "pre-stage: no rootfs rounds through a registry: the checkpoint image carries the whole rootfs diff, so that it restores anywhere on its own";

    /// <summary>A checkpoint carried through a registry (--via): the tag asked for, and REGISTRY/REPO@DIGEST once the source pushed it.</summary>
    private sealed class RegistryHop
    {
        public string? Tag { get; set; }

        public string? Image { get; set; }

        /// <summary>For a failure's message: what stays in the registry (nothing this client may delete).</summary>
        public string LeftInRegistry => (Image, Tag) switch
        {
            ({ } image, _) => $"; the checkpoint image stays in the registry as {image} (delete it there when it is not wanted)",
            (null, { } tag) => $"; the checkpoint image may have reached the registry as {tag} (the push did not answer; delete it there if it did)",
            _ => "",
        };
    }

    /// <summary>
    /// <c>--via</c>: the source pushes its held checkpoint to <paramref name="via"/> tagged by the migration, and the target
    /// pulls it by the digest the push answered (<paramref name="hop"/> names it from the push on, so that an undo removes
    /// the target's copy). Returns the layer's bytes, what the registry carried.
    /// </summary>
    private async Task<long> CarryThroughRegistryAsync(string token, string via, string migrationId, RegistryHop hop, CancellationToken ct)
    {
        hop.Tag = $"{via}:migration-{migrationId}";
        progress($"transfer: {source.Name} pushes the checkpoint to {hop.Tag}");
        var (digest, layerBytes) = await source.PublishArchiveAsync(token, hop.Tag, ct).ConfigureAwait(false);
        hop.Image = $"{via}@{digest}";
        progress(string.Create(CultureInfo.InvariantCulture, $"transfer: {layerBytes} bytes in the registry as {hop.Image}; {target.Name} pulls it"));
        await target.PullImageAsync(hop.Image, ct).ConfigureAwait(false);
        return layerBytes;
    }

    /// <summary>
    /// <c>--via REGISTRY/REPO</c>: the repository the checkpoint image goes to, tagged by the migration; null without it.
    /// A tag or digest of its own is refused (each migration pushes a tag of its own).
    /// </summary>
    internal static string? CheckVia(string? via)
    {
        if (via is null)
        {
            return null;
        }

        var repository = via.Trim().TrimEnd('/');
        var last = repository[(repository.LastIndexOf('/') + 1)..];
        var host = repository.Contains('/', StringComparison.Ordinal) ? repository[..repository.IndexOf('/', StringComparison.Ordinal)] : "";
        // The registry is named, never implied: a short name would send the container's memory to Docker Hub.
        var namesRegistry = host.Contains('.', StringComparison.Ordinal) || host.Contains(':', StringComparison.Ordinal) || host == "localhost";
        if (repository.Length == 0 || !namesRegistry || last.Contains(':', StringComparison.Ordinal) || repository.Contains('@', StringComparison.Ordinal)
            || !Crest.Core.ImageReference.TryParse(repository + ":migration", out _, out _))
        {
            throw new CliUsageException($"--via {via}: expected REGISTRY/REPO naming the registry host and no tag or digest, such as 127.0.0.1:5000/checkpoints or registry.example.com/checkpoints; "
                + "each migration pushes the tag migration-ID there");
        }

        return repository;
    }

    private const long PageSize = 4096;

    /// <summary>
    /// Post-copy: polls every restored container's transfer on each tick until all ended, and returns the pages they
    /// fetched; the first that broke (its copy killed by the target's watchdog), a container without a transfer, or
    /// <paramref name="timeout"/> over all of them is a failure, which the caller undoes at once.
    /// </summary>
    private async Task<long> AwaitPagesAsync(IEnumerable<string> restored, TimeSpan timeout, CancellationToken ct)
    {
        var waiting = restored.ToDictionary(id => id, _ => (LazyPagesProgress?)null, StringComparer.Ordinal);
        var started = time.GetTimestamp();
        var reported = time.GetTimestamp();
        long pages = 0;
        while (true)
        {
            foreach (var id in waiting.Keys.ToList())
            {
                var p = await target.LazyPagesAsync(id, wait: false, ct).ConfigureAwait(false);
                if (!p.Present)
                {
                    throw new InvalidOperationException($"the restored container {id} on {target.Name} has no post-copy transfer (did its crestd restart?)");
                }

                if (p.Finished && !p.Succeeded)
                {
                    throw new InvalidOperationException($"the memory transfer to {id} on {target.Name} broke: {p.Problem}");
                }

                if (p.Finished)
                {
                    pages += p.Pages;
                    waiting.Remove(id);
                }
                else
                {
                    waiting[id] = p;
                }
            }

            if (waiting.Count == 0)
            {
                return pages;
            }

            if (time.GetElapsedTime(started) > timeout)
            {
                throw new TimeoutException(string.Create(CultureInfo.InvariantCulture,
                    $"the memory of {string.Join(", ", waiting.Keys)} did not arrive on {target.Name} within {timeout.TotalSeconds:0} s ({string.Join("; ", waiting.Select(w => $"{w.Key}: {w.Value?.Pages ?? 0} of {w.Value?.TotalPages ?? 0} pages"))})"));
            }

            if (time.GetElapsedTime(reported) > TimeSpan.FromSeconds(1))
            {
                progress($"post-copy: {string.Join(", ", waiting.Keys)} run(s) on {target.Name} while the memory arrives");
                reported = time.GetTimestamp();
            }

            await Task.Delay(Poll, time, ct).ConfigureAwait(false);
        }
    }

    private async Task CheckStrategyAsync(MigrationStrategy strategy, CancellationToken ct)
    {
        foreach (var node in new[] { source, target })
        {
            var capabilities = await node.CapabilitiesAsync(ct).ConfigureAwait(false);
            if (capabilities.Problems.GetValueOrDefault(strategy) is { } problem)
            {
                throw new MigrationFailedException($"--strategy {MigrationStrategies.Name(strategy)} is refused by {node.Name}: {problem}");
            }
        }
    }

    /// <summary>The restored container reports CONTAINER_RUNNING (StartContainer returned after CRIU restored it).</summary>
    private async Task ExpectRunningAsync(string id, CancellationToken ct)
    {
        var state = await target.StateAsync(id, ct).ConfigureAwait(false);
        if (state != "CONTAINER_RUNNING")
        {
            throw new InvalidOperationException($"the restored container {id} on {target.Name} is {state}, not CONTAINER_RUNNING");
        }
    }

    /// <summary>The target's first log line after the source's last, awaited for at most <see cref="Settle"/>.</summary>
    private async Task<DateTimeOffset?> FirstTargetLineAsync(string id, DateTimeOffset lastSource, CancellationToken ct)
    {
        var waited = time.GetTimestamp();
        while (true)
        {
            var (_, first) = await target.LogTimesAsync(id, lastSource, ct).ConfigureAwait(false);
            if (first is not null || time.GetElapsedTime(waited) > Settle)
            {
                return first;
            }

            await Task.Delay(Poll, time, ct).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Reads the source's chunks up to <see cref="ReadAheadChunks"/> ahead of the target's writes, so the two hops
    /// (source to client, client to target) overlap instead of taking turns; a source failure reaches the writer.
    /// </summary>
    private static async IAsyncEnumerable<ReadOnlyMemory<byte>> ReadAhead(IAsyncEnumerable<ReadOnlyMemory<byte>> chunks, [EnumeratorCancellation] CancellationToken ct)
    {
        var buffered = Channel.CreateBounded<ReadOnlyMemory<byte>>(ReadAheadChunks);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var pump = Task.Run(async () =>
        {
            try
            {
                await foreach (var chunk in chunks.WithCancellation(stop.Token).ConfigureAwait(false))
                {
                    await buffered.Writer.WriteAsync(chunk, stop.Token).ConfigureAwait(false);
                }

                buffered.Writer.Complete();
            }
            catch (Exception e)
            {
                buffered.Writer.Complete(e);
            }
        }, CancellationToken.None);
        try
        {
            await foreach (var chunk in buffered.Reader.ReadAllAsync(ct).ConfigureAwait(false))
            {
                yield return chunk;
            }
        }
        finally
        {
            await stop.CancelAsync().ConfigureAwait(false);
            await pump.ConfigureAwait(false);
        }
    }

    private const int ReadAheadChunks = 64;

    private sealed class RelayCount
    {
        public long Bytes { get; set; }
    }

    /// <summary>Passes the chunks on, counting their bytes into <paramref name="count"/>.</summary>
    private static async IAsyncEnumerable<ReadOnlyMemory<byte>> Counted(IAsyncEnumerable<ReadOnlyMemory<byte>> chunks, RelayCount count, [EnumeratorCancellation] CancellationToken ct)
    {
        await foreach (var chunk in chunks.WithCancellation(ct).ConfigureAwait(false))
        {
            count.Bytes += chunk.Length;
            yield return chunk;
        }
    }

    private static string Describe(Exception e) => e switch
    {
        CliFailure f => f.Message,
        _ => e.Message,
    };
}
