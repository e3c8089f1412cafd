namespace Crest.Core;

/// <summary>The engine that wrote a checkpoint, as checkpointctl tells them apart (spec.dump io.container.manager).</summary>
public enum CheckpointEngine
{
    Crest,
    Containerd,
    CriO,
    Podman,
}

/// <summary>Where a checkpoint comes from: an archive on the node, a checkpoint image in the local store, or a migration archive unpacked on receipt.</summary>
public enum CheckpointSourceKind
{
    Archive,
    Image,

    /// <summary>A directory <see cref="CrestPaths.ReceivedCheckpoint"/> names: unpacked from a migration peer's archive under the restore's checks, consumed by one restore.</summary>
    Received,
}

/// <summary>A bind mount recorded in a checkpoint (CRI-O's bind.mounts).</summary>
public sealed record CheckpointBindMount(string Source, string Destination, bool IsDirectory, uint Permissions);

/// <summary>
/// How CRIU puts the processes back (the flags of <c>runc restore</c>): chosen by the checkpoint layer to match how
/// the checkpoint was dumped and what the node's [restore] settings allow, kept on the container from create to start.
/// </summary>
public sealed record CriuRestoreOptions
{
    /// <summary>Restore the file locks the processes held: every engine Crest reads dumps with them (<c>--file-locks</c>).</summary>
    public bool FileLocks { get; init; } = true;
    /// <summary>Re-establish the TCP connections that were open at the dump (<c>--tcp-established</c>, [restore] tcp_established).</summary>
    public bool TcpEstablished { get; init; }
    /// <summary>
    /// Post-copy: the checkpoint holds no memory; it is fetched from the migration source's page server at this
    /// <c>HOST:PORT</c> by a <c>criu lazy-pages</c> daemon while the restored processes run (<c>--lazy-pages</c>).
    /// </summary>
    public string? LazyPagesFrom { get; init; }

    /// <summary>
    /// The CreateContainer annotation by which a migration asks for a post-copy restore: its value becomes
    /// <see cref="LazyPagesFrom"/>, and it is not passed on to the container.
    /// </summary>
    public const string LazyPagesFromAnnotation = "io.crest.migration.lazy-pages-from";

    /// <summary>
    /// Post-copy over TLS: the token of this node's page client identity (its key pair, made by PreparePageClient), which
    /// <c>criu lazy-pages</c> proves to the page server; with <see cref="LazyPagesServerCertificate"/>.
    /// </summary>
    public string? LazyPagesIdentity { get; init; }

    /// <summary>Post-copy over TLS: the page server's certificate (PEM), the only one <c>criu lazy-pages</c> accepts.</summary>
    public string? LazyPagesServerCertificate { get; init; }

    /// <summary>The CreateContainer annotation that becomes <see cref="LazyPagesIdentity"/> (not passed on to the container).</summary>
    public const string PageClientIdentityAnnotation = "io.crest.migration.page-client-identity";

    /// <summary>The CreateContainer annotation that becomes <see cref="LazyPagesServerCertificate"/> (not passed on to the container).</summary>
    public const string PageServerCertificateAnnotation = "io.crest.migration.page-server-certificate";
    /// <summary>
    /// CRIU's copy of the pod's System V segments (ipcns-shm images) is left out of this restore: every container of a
    /// pod dumps the whole pod IPC namespace, and CRIU creates the segments in the joined namespace, so exactly one
    /// restore (the container that has segments attached, else Crest itself) may create them; another would fail with EEXIST.
    /// </summary>
    public bool LeaveOutSysVShm { get; init; }

    /// <summary>
    /// CRIU leaves the restored processes stopped (SIGSTOP) instead of resuming them: a pod's containers come back one
    /// StartContainer at a time, and none may run (and change a shared file or send on a connection) before its peers
    /// are back; the last one's restore continues them all (RestorePod, PodRestoreHolds).
    /// </summary>
    public bool LeaveStopped { get; init; }

    /// <summary>The OCI annotation by which runc and crun hand CRIU a configuration file, on every CRIU call for the container.</summary>
    public const string ConfigAnnotation = "org.criu.config";
}

/// <summary>
/// One restore, normalised from a Crest, containerd, CRI-O or Podman checkpoint: everything CreateContainer and
/// StartContainer need to know, read from untrusted files and checked. Only the checkpoint layer builds it; the runtime
/// layer executes it (<c>ContainerService.CreateAsync(sandbox, spec, plan)</c>, then <c>IOciRuntime.RestoreAsync</c> at start).
/// </summary>
public sealed record RestorePlan
{
    public required CheckpointEngine Engine { get; init; }
    public required CheckpointSourceKind SourceKind { get; init; }
    /// <summary>The archive path or image as the request named it.</summary>
    public required string Source { get; init; }
    /// <summary>The base image by digest (NAME@sha256:...), the only form pulled without a warning; null when the checkpoint names none.</summary>
    public string? BaseImageDigestReference { get; init; }
    /// <summary>A local image ID the checkpoint names (containerd's and CRI-O's fallback); looked up locally, never pulled.</summary>
    public string? BaseImageId { get; init; }
    /// <summary>The base image's tag (NAME:TAG): shown to users, and used only when nothing better is known.</summary>
    public string? BaseImageName { get; init; }
    /// <summary>The name the checkpointed container had (CRI metadata name where the archive has it).</summary>
    public required string OriginalName { get; init; }
    public required string OriginalRuntime { get; init; }
    /// <summary>The checkpointed process's argv from spec.dump: the new spec needs one, although CRIU restores the real one from memory.</summary>
    public IReadOnlyList<string> ProcessArgs { get; init; } = [];
    /// <summary>The checkpointed process had joined a pid namespace by path (a pod's): CRIU can restore it only into a joined one again.</summary>
    public bool JoinedPidNamespace { get; init; }
    public required IReadOnlyDictionary<string, string> Annotations { get; init; }
    public required IReadOnlyDictionary<string, string> Labels { get; init; }
    public required DateTimeOffset CheckpointedAt { get; init; }
    public IReadOnlyList<CheckpointBindMount> BindMounts { get; init; } = [];
    /// <summary>Bind-mount destinations of the checkpointed container; each must be declared again by the restore request.</summary>
    public IReadOnlyList<string> MountDestinations { get; init; } = [];
    /// <summary>The name of the old log copy inside <see cref="StagingDir"/>, if the checkpoint has one.</summary>
    public string? LogCopy { get; init; }
    /// <summary>
    /// The private (0700) directory the checkpoint was unpacked into: CRIU's images (checkpoint/), the rootfs changes
    /// (rootfs-diff.tar, deleted.files) and bind.mounts, which the runtime moves into the container at create.
    /// </summary>
    public required string StagingDir { get; init; }
    /// <summary>The flags CRIU restores with; the checkpoint layer sets them from the node's [restore] settings.</summary>
    public CriuRestoreOptions Criu { get; init; } = new();
    /// <summary>
    /// A live migration's frozen checkpoint: its rootfs diff holds only what changed since these rounds (SHA-256 of each
    /// round's tar, in order), staged on this node before the freeze; null for a complete checkpoint.
    /// </summary>
    public IReadOnlyList<string>? StagedRootfsRounds { get; init; }

    /// <summary>
    /// The CreateContainer annotation by which a migration names the rootfs rounds this node staged for the restore (the
    /// token WriteRootfsRound answered); not passed on to the container.
    /// </summary>
    public const string RootfsStagingAnnotation = "io.crest.migration.rootfs-staging";

    /// <summary>Sizes, for logs and `crest checkpoint inspect`.</summary>
    public long RootfsDiffBytes { get; init; }
    public long CriuImageBytes { get; init; }

    /// <summary>Of <see cref="CriuImageBytes"/>, the page images CRIU reads where the archive holds them (not copied); 0 when all were written out.</summary>
    public long PagesServedInPlaceBytes { get; init; }
}
