namespace Crest.Cli.Migration;

/// <summary>
/// One node as a migration drives it: plain CRI calls and Crest's crest.v1.CrestMigration service on the same socket.
/// The real node is <see cref="GrpcMigrationNode"/>; unit tests drive the orchestration over a fake. A call to a node
/// whose crestd does not answer fails with <see cref="NodeUnavailableException"/>.
/// </summary>
internal interface IMigrationNode
{
    /// <summary>The endpoint, for messages.</summary>
    string Name { get; }

    Task<NodeCapabilities> CapabilitiesAsync(CancellationToken ct);

    /// <summary>A running container as the target must recreate it; fails if it does not run.</summary>
    Task<SourceContainer> InspectAsync(string containerId, CancellationToken ct);

    /// <summary>Pulls an image (by digest) and returns its size in bytes.</summary>
    Task<long> PullImageAsync(string image, CancellationToken ct);

    /// <summary>Checks that a pod exists and is ready.</summary>
    Task CheckPodAsync(string podId, CancellationToken ct);

    Task<string> RunPodAsync(Runtime.V1.PodSandboxConfig config, CancellationToken ct);

    Task RemovePodAsync(string podId, CancellationToken ct);

    /// <summary>The addresses the pod network gave a pod (PodSandboxStatus), first the primary one.</summary>
    Task<IReadOnlyList<string>> PodIpsAsync(string podId, CancellationToken ct);

    /// <summary>
    /// Source: checkpoint and leave frozen; with <paramref name="pageServerAddress"/> (post-copy) the memory is served from
    /// a page server there; with <paramref name="tcpEstablished"/> established TCP connections are dumped and the pod's
    /// TCP traffic stays locked until <see cref="ResumeAsync"/> or the pod's removal.
    /// </summary>
    /// <remarks>With <paramref name="rootfsRounds"/> (<see cref="PrepareRootfsRoundAsync"/>'s token) the archive carries only the rootfs changes since the last round.</remarks>
    /// <remarks>With <paramref name="pageClientCertificate"/> (post-copy over TLS) the page server accepts only that client and answers its own certificate.</remarks>
    Task<FrozenSource> FreezeAsync(string containerId, long timeoutSeconds, string? pageServerAddress, bool tcpEstablished, string? rootfsRounds, string? pageClientCertificate, CancellationToken ct);

    /// <summary>Target of a post-copy migration over TLS, before the freeze: a fresh key pair for its page client; the key stays there.</summary>
    Task<PageClientIdentity> PreparePageClientAsync(CancellationToken ct);

    /// <summary>
    /// Source, while the container runs: the next round of its rootfs diff (the first: all of it; later: what changed since
    /// the previous round), held for <see cref="ReadArchiveAsync"/>; <paramref name="roundsToken"/> is null for the first.
    /// </summary>
    Task<SourceRootfsRound> PrepareRootfsRoundAsync(string containerId, string? roundsToken, CancellationToken ct);

    /// <summary>
    /// Target: stores one rootfs round under the staging (a new one when null); its token, round number and bytes. Once
    /// <paramref name="chunks"/> ended, <paramref name="trailer"/>'s digest (when the source sent one) goes with them, as
    /// with <see cref="WriteArchiveAsync"/>.
    /// </summary>
    Task<(string StagingToken, int Round, long Bytes)> WriteRootfsRoundAsync(string? stagingToken, IAsyncEnumerable<ReadOnlyMemory<byte>> chunks, ArchiveTrailer trailer, CancellationToken ct);

    /// <summary>Either node: forgets rootfs rounds (the source's record, or the target's staged rounds).</summary>
    Task DropRootfsRoundsAsync(string token, CancellationToken ct);

    Task ResumeAsync(string containerId, CancellationToken ct);

    Task KillFrozenAsync(string containerId, CancellationToken ct);

    /// <summary>Source: streams a held archive; once it ended, <paramref name="trailer"/> holds the digest the source sent and this client checked.</summary>
    IAsyncEnumerable<ReadOnlyMemory<byte>> ReadArchiveAsync(string token, ArchiveTrailer trailer, CancellationToken ct);

    /// <summary>
    /// Target: stores an archive; its token and the path to restore from. With <paramref name="unpack"/> a container
    /// checkpoint is unpacked as it arrives and the path names that checkpoint directory, which one restore consumes (a
    /// node that predates unpacking stores the file, and the path names it: either restores the same). Once
    /// <paramref name="chunks"/> ended, <paramref name="trailer"/>'s digest (the source's, when it sent one) ends the
    /// stream, and the target keeps nothing unless its bytes match it.
    /// </summary>
    Task<(string Token, string Path, long Bytes)> WriteArchiveAsync(IAsyncEnumerable<ReadOnlyMemory<byte>> chunks, bool unpack, ArchiveTrailer trailer, CancellationToken ct);

    Task DropArchiveAsync(string token, CancellationToken ct);

    /// <summary>
    /// Source, through a registry (<c>--via</c>): pushes a held container checkpoint to <paramref name="image"/>
    /// (REGISTRY/REPO:TAG) as a checkpoint OCI image; the pushed manifest's digest and the layer's bytes.
    /// </summary>
    Task<(string ManifestDigest, long LayerBytes)> PublishArchiveAsync(string token, string image, CancellationToken ct);

    /// <summary>Source, before the freeze (<c>--via</c>): fails when this node cannot push a checkpoint (its crestd predates PublishArchive).</summary>
    Task CheckPublishAsync(CancellationToken ct);

    /// <summary>Removes an image from the node (CRI RemoveImage; one that is not there is not an error).</summary>
    Task RemoveImageAsync(string image, CancellationToken ct);

    /// <summary>
    /// Target: CreateContainer from the archive at <paramref name="archivePath"/> into <paramref name="podId"/>, then
    /// StartContainer; with <paramref name="lazyPages"/> (post-copy) the memory is fetched from that page server.
    /// </summary>
    /// <remarks>With <paramref name="rootfsStaging"/> the restore applies the rootfs rounds staged under it before the archive's delta.</remarks>
    Task<string> RestoreAsync(string podId, string archivePath, SourceContainer source, LazyPagesSource? lazyPages, string? rootfsStaging, CancellationToken ct);

    /// <summary>Target: a post-copy restore's memory transfer now, or (with <paramref name="wait"/>) once it ended.</summary>
    Task<LazyPagesProgress> LazyPagesAsync(string containerId, bool wait, CancellationToken ct);

    /// <summary>
    /// Target: the containers carrying <see cref="MigrationLabels.MigrationId"/> = <paramref name="migrationId"/>, whatever
    /// their state: a restore whose answer was lost (its crestd died) is found by what the migration labelled it with.
    /// </summary>
    Task<IReadOnlyList<string>> FindRestoredAsync(string migrationId, CancellationToken ct);

    /// <summary>The container's CRI state, e.g. CONTAINER_RUNNING.</summary>
    Task<string> StateAsync(string containerId, CancellationToken ct);

    /// <summary>Stops and removes a container.</summary>
    Task RemoveContainerAsync(string containerId, CancellationToken ct);

    /// <summary>A ready pod and every container in it, each as <see cref="InspectAsync"/> sees it; fails unless all of them run.</summary>
    Task<SourcePod> InspectPodAsync(string podId, CancellationToken ct);

    /// <summary>
    /// Source: checkpoints every container of the pod at one instant and leaves all of them frozen and held (each ends by
    /// <see cref="ResumeAsync"/> or <see cref="KillFrozenAsync"/>); the pod checkpoint is held for <see cref="ReadArchiveAsync"/>.
    /// <paramref name="rootfsRounds"/>: by container id, the rounds of <see cref="PrepareRootfsRoundAsync"/> the target
    /// staged for it, so that its checkpoint carries only the rootfs changes since its last round.
    /// </summary>
    /// <remarks>With <paramref name="tcpEstablished"/> the pod's established TCP connections are dumped and its TCP traffic stays locked, as <see cref="FreezeAsync"/>'s.</remarks>
    /// <remarks>
    /// With <paramref name="pageServerAddress"/> (post-copy) each container's memory stays out of the checkpoint and a page
    /// server of its own on that address serves it (<see cref="FrozenPod.PageServers"/>); <paramref name="pageClientCertificates"/>,
    /// by container id, makes each speak TLS to that client only.
    /// </remarks>
    Task<FrozenPod> FreezePodAsync(string podId, long timeoutSeconds, IReadOnlyDictionary<string, string> rootfsRounds, bool tcpEstablished, string? pageServerAddress,
        IReadOnlyDictionary<string, string> pageClientCertificates, CancellationToken ct);

    /// <summary>
    /// Target: CRI RestorePod from the pod checkpoint tar at <paramref name="checkpointPath"/> into a new pod made from
    /// <paramref name="config"/>, one container config per source container, then StartContainer of each. A start that
    /// fails removes the pod made. <paramref name="rootfsStaging"/>: by container name, the staged rootfs rounds
    /// (<see cref="WriteRootfsRoundAsync"/>) its restore claims.
    /// </summary>
    /// <remarks>
    /// With <paramref name="expectedIps"/> (--keep-address) the new pod must hold those addresses before any container
    /// starts; a pod without them is removed and nothing ran. With <paramref name="lazyPages"/> (post-copy), by container
    /// name, each such container faults its memory in from its source page server.
    /// </remarks>
    Task<RestoredPod> RestorePodAsync(string checkpointPath, Runtime.V1.PodSandboxConfig config, IReadOnlyList<SourceContainer> containers, IReadOnlyDictionary<string, string> rootfsStaging,
        IReadOnlyList<string> expectedIps, IReadOnlyDictionary<string, LazyPagesSource> lazyPages, CancellationToken ct);

    /// <summary>Target: the pods carrying <see cref="MigrationLabels.MigrationId"/> = <paramref name="migrationId"/> (a RestorePod whose answer was lost).</summary>
    Task<IReadOnlyList<string>> FindRestoredPodsAsync(string migrationId, CancellationToken ct);

    /// <summary>The container log's last line time, and its first line after <paramref name="after"/>.</summary>
    Task<(DateTimeOffset? Last, DateTimeOffset? FirstAfter)> LogTimesAsync(string containerId, DateTimeOffset? after, CancellationToken ct);
}
