namespace Crest.Cli.Migration;

/// <summary>How a container's memory moves (docs/user-guide.md, Live migration).</summary>
internal enum MigrationStrategy
{
    /// <summary>Freeze, dump everything, copy, restore: down for the whole dump, copy and restore.</summary>
    StopCopy,

    /// <summary>Restore at once without memory and fault it in from the source's page server (CRIU lazy pages).</summary>
    PostCopy,

    /// <summary>Copy memory while running, then only what changed (needs soft-dirty tracking). Not built yet: refused.</summary>
    PreCopy,
}

/// <summary>What <c>crest migrate</c> was asked: which container, into which pod on the target (an existing one, or one to make).</summary>
internal sealed record MigrationRequest(string ContainerId, MigrationStrategy Strategy, string? TargetPodId, Runtime.V1.PodSandboxConfig? TargetPodConfig)
{
    /// <summary>The checkpoint's deadline on the source (0: the node's default).</summary>
    public long FreezeTimeoutSeconds { get; init; }

    /// <summary>Post-copy: the source node's IP address its page server listens on, which the target connects to.</summary>
    public string PageServerAddress { get; init; } = "127.0.0.1";

    /// <summary>
    /// Post-copy: the page server speaks TLS, each side with a key pair of its own made for this migration and the other's
    /// certificate pinned (<c>--no-page-server-tls</c> turns it off).
    /// </summary>
    public bool PageServerTls { get; init; } = true;

    /// <summary>Post-copy: how long the memory may take to arrive before the target's copy is given up.</summary>
    public TimeSpan PageTransferTimeout { get; init; } = TimeSpan.FromMinutes(10);
    /// <summary>
    /// The target pod gets the source pod's address (annotation <see cref="Core.PodAnnotations.NetworkIps"/>), established
    /// TCP connections move with the container, and the source pod is removed after the switch (<c>--keep-address</c>).
    /// </summary>
    public bool KeepAddress { get; init; }

    /// <summary>
    /// Pre-stage the rootfs in rounds while the container runs (the default); false carries the whole rootfs diff in the
    /// frozen window, as a checkpoint does (<c>--no-rootfs-rounds</c>: for comparison, or a source without the rounds).
    /// </summary>
    public bool RootfsRounds { get; init; } = true;

    /// <summary>
    /// <c>--via REGISTRY/REPO</c>: the checkpoint goes through that registry as a checkpoint OCI image (the source pushes
    /// it, the target pulls it by digest) instead of streaming through this client; it carries the whole rootfs diff.
    /// </summary>
    public string? Via { get; init; }
}

/// <summary>The source container as the target needs to recreate it.</summary>
internal sealed record SourceContainer(
    string Id,
    string Name,
    string PodId,
    string Image,
    string? BaseImageDigestReference,
    string LogPath,
    bool PrivatePidNamespace,
    IReadOnlyDictionary<string, string> Labels,
    IReadOnlyDictionary<string, string> Annotations,
    IReadOnlyList<Runtime.V1.Mount> Mounts)
{
    /// <summary>The source pod's addresses (PodSandboxStatus), first the primary one; empty when it has none of its own.</summary>
    public IReadOnlyList<string> PodIps { get; init; } = [];
}

/// <summary>The source's frozen checkpoint.</summary>
internal sealed record FrozenSource(string ArchiveToken, long ArchiveBytes, TimeSpan Paused)
{
    /// <summary>Post-copy: HOST:PORT of the source's page server.</summary>
    public string? PageServer { get; init; }

    /// <summary>Post-copy over TLS: the page server's certificate (PEM), made for this freeze.</summary>
    public string? PageServerCertificate { get; init; }

    /// <summary>The rootfs diff the archive carries: entries and bytes of regular files (after rounds, only the last changes).</summary>
    public long RootfsEntries { get; init; }

    public long RootfsBytes { get; init; }
}

/// <summary>One round of the source's rootfs, held on the source as an archive until the target has it.</summary>
internal sealed record SourceRootfsRound(string RoundsToken, int Round, string ArchiveToken, long ArchiveBytes, long Files, long Bytes, long Deleted);

/// <summary>What one rootfs round moved before the freeze: regular files, their bytes, deletions, and the bytes sent.</summary>
internal sealed record RootfsRoundReport(int Round, long Files, long Bytes, long Deleted, long ArchiveBytes);

/// <summary>
/// When pre-staging the rootfs stops and the container is frozen: after the first round (everything), another round
/// follows while the last one sent more than <see cref="SmallRoundBytes"/> (a smaller one is cheaper to carry in the
/// frozen window than to chase), while it was smaller than the one before (a workload that writes as fast as rounds
/// send will not converge), and at most <see cref="MaxRounds"/> rounds in all.
/// </summary>
internal static class RootfsRoundRule
{
    public const int MaxRounds = 4;

    public const long SmallRoundBytes = 1L << 20;

    /// <summary>Whether to send another round after rounds that sent <paramref name="archiveBytes"/> (in order).</summary>
    public static bool AnotherRound(IReadOnlyList<long> archiveBytes)
    {
        ArgumentNullException.ThrowIfNull(archiveBytes);
        return archiveBytes.Count == 0
            || (archiveBytes.Count < MaxRounds
                && archiveBytes[^1] > SmallRoundBytes
                && (archiveBytes.Count < 2 || archiveBytes[^1] < archiveBytes[^2]));
    }
}

/// <summary>A target's page client key pair for one post-copy migration: its token on the target, and its certificate (PEM).</summary>
internal sealed record PageClientIdentity(string Token, string Certificate);

/// <summary>
/// Where a post-copy restore fetches its memory: the source's page server, and over TLS the server's certificate and the
/// token of the target's own key pair (both null without TLS).
/// </summary>
internal sealed record LazyPagesSource(string PageServer, string? ServerCertificate, string? ClientIdentity);

/// <summary>A post-copy target's memory transfer: pages fetched of all, and how it ended.</summary>
internal sealed record LazyPagesProgress(bool Present, bool Finished, bool Succeeded, long Pages, long TotalPages, string? Problem);

/// <summary>Which strategies one node supports, with reasons for the others.</summary>
internal sealed record NodeCapabilities(IReadOnlyDictionary<MigrationStrategy, string?> Problems);

/// <summary>What a finished migration did and measured.</summary>
internal sealed record MigrationReport(
    string SourceContainerId,
    string TargetContainerId,
    string TargetPodId,
    MigrationStrategy Strategy,
    long BytesBeforeSwitch,
    long BytesDuringSwitch,
    TimeSpan Frozen,
    TimeSpan? Downtime,
    DateTimeOffset? LastSourceLine,
    DateTimeOffset? FirstTargetLine,
    TimeSpan Total)
{
    /// <summary>Post-copy: memory fetched by the target after it started running (pages of 4 KiB).</summary>
    public long BytesAfterSwitch { get; init; }

    /// <summary>Post-copy: from the target running to its last page arriving.</summary>
    public TimeSpan? PageTransfer { get; init; }

    /// <summary>The rootfs rounds sent before the freeze (their bytes are in <see cref="BytesBeforeSwitch"/>).</summary>
    public IReadOnlyList<RootfsRoundReport> RootfsRounds { get; init; } = [];

    /// <summary>The rootfs bytes (regular files) the frozen window carried: with rounds, only what changed since the last.</summary>
    public long FrozenRootfsBytes { get; init; }

    /// <summary>Through a registry (--via): REGISTRY/REPO@DIGEST of the checkpoint image, which stays there.</summary>
    public string? CheckpointImage { get; init; }
}

/// <summary>A migration that failed, after the undo: <see cref="Exception.Message"/> says what failed and where the container runs now.</summary>
internal sealed class MigrationFailedException(string message, Exception? inner = null) : Exception(message, inner)
{
}

/// <summary>
/// A node that did not answer a call: its crestd is down or restarting (the socket is gone or refuses connections, or the
/// call was cut off). The orchestrator waits a bounded time for it to come back before it gives up an ending step.
/// </summary>
internal sealed class NodeUnavailableException(string message, Exception? inner = null) : Exception(message, inner)
{
}

/// <summary>The label a migration puts on the container it restores on the target, so that an undo finds it by the migration's id.</summary>
internal static class MigrationLabels
{
    public const string MigrationId = "io.crest.migration.id";
}

internal static class MigrationStrategies
{
    public static string Name(MigrationStrategy s) => s switch
    {
        MigrationStrategy.StopCopy => "stop-copy",
        MigrationStrategy.PostCopy => "post-copy",
        _ => "pre-copy",
    };

    public static MigrationStrategy Parse(string? text) => (text ?? "stop-copy").Trim().ToLowerInvariant() switch
    {
        "stop-copy" => MigrationStrategy.StopCopy,
        "post-copy" => MigrationStrategy.PostCopy,
        "pre-copy" => MigrationStrategy.PreCopy,
        _ => throw new CliUsageException($"--strategy {text}: expected stop-copy, post-copy or pre-copy"),
    };
}

/// <summary>
/// The SHA-256 trailer a source ended a streamed archive with, once the client has read and checked it (null until
/// then, and from a node that sends none); the client forwards it to the target, which checks the same bytes against
/// it, so the digest covers the archive from the source to the target and the client hashes it once.
/// </summary>
internal sealed class ArchiveTrailer
{
    public byte[]? Sha256 { get; set; }
}
