namespace Crest.Cli.Migration;

/// <summary>What <c>crest migrate pod</c> was asked: which pod, into a new pod on the target made from <see cref="TargetPodConfig"/>.</summary>
internal sealed record PodMigrationRequest(string PodId, MigrationStrategy Strategy, Runtime.V1.PodSandboxConfig TargetPodConfig)
{
    /// <summary>The pod checkpoint's deadline on the source (0: the call's own deadline only).</summary>
    public long FreezeTimeoutSeconds { get; init; }

    /// <summary>
    /// Each container's rootfs moves in rounds before the freeze (false: all of it in the frozen window, as a pod
    /// checkpoint carries it; <c>--no-rootfs-rounds</c>).
    /// </summary>
    public bool RootfsRounds { get; init; } = true;

    /// <summary>
    /// The target pod gets the source pod's address (annotation <see cref="Core.PodAnnotations.NetworkIps"/>), the pod's
    /// established TCP connections move with it (<c>--keep-address</c>).
    /// </summary>
    public bool KeepAddress { get; init; }

    /// <summary><c>--via REGISTRY/REPO</c>: the pod checkpoint goes through that registry as a pod checkpoint image (no rootfs rounds).</summary>
    public string? Via { get; init; }

    /// <summary>Post-copy: the source's IP address its page servers (one per container) listen on, reachable from the target.</summary>
    public string PageServerAddress { get; init; } = "127.0.0.1";

    /// <summary>Post-copy: each page server speaks TLS, pinned to a client key pair the target makes for that container (false: <c>--no-page-server-tls</c>).</summary>
    public bool PageServerTls { get; init; } = true;

    /// <summary>Post-copy: how long every container's memory may take to arrive after the pod runs on the target.</summary>
    public TimeSpan PageTransferTimeout { get; init; } = TimeSpan.FromMinutes(10);
}

/// <summary>A ready source pod and its running containers, as the target must recreate them.</summary>
internal sealed record SourcePod(string Id, IReadOnlyList<SourceContainer> Containers);

/// <summary>The source's frozen pod: the held pod checkpoint's token, the containers held frozen, and how long the freeze took.</summary>
internal sealed record FrozenPod(string ArchiveToken, IReadOnlyList<string> ContainerIds, TimeSpan Paused, long CheckpointBytes)
{
    /// <summary>The containers' rootfs diffs the checkpoint carries: entries and file bytes (after rounds, only the last changes).</summary>
    public long RootfsEntries { get; init; }

    public long RootfsBytes { get; init; }

    /// <summary>The source dumped the established TCP connections and locked the pod's TCP (false from a crestd that predates it).</summary>
    public bool TcpEstablished { get; init; }

    /// <summary>Post-copy: each container's page server, by source container id (none from a crestd that predates them).</summary>
    public IReadOnlyDictionary<string, SourcePageServer> PageServers { get; init; } = new Dictionary<string, SourcePageServer>();
}

/// <summary>A post-copy source container's page server: its <c>HOST:PORT</c>, and its certificate (PEM) when it speaks TLS.</summary>
internal sealed record SourcePageServer(string PageServer, string? Certificate);

/// <summary>The pod RestorePod made on the target, and its started containers by metadata name.</summary>
internal sealed record RestoredPod(string PodId, IReadOnlyDictionary<string, string> ContainerIds);

/// <summary>One container of a migrated pod: where it went, and its downtime from its own log (unknown when it logged nothing).</summary>
internal sealed record PodContainerMove(string Name, string SourceContainerId, string TargetContainerId, TimeSpan? Downtime, DateTimeOffset? LastSourceLine, DateTimeOffset? FirstTargetLine)
{
    /// <summary>The rootfs rounds that moved this container's rootfs before the freeze.</summary>
    public IReadOnlyList<RootfsRoundReport> RootfsRounds { get; init; } = [];
}

/// <summary>What a finished whole-pod migration did and measured; <see cref="Downtime"/> is the longest of the containers'.</summary>
internal sealed record PodMigrationReport(
    string SourcePodId,
    string TargetPodId,
    IReadOnlyList<PodContainerMove> Containers,
    long BytesBeforeSwitch,
    long BytesDuringSwitch,
    TimeSpan Frozen,
    TimeSpan? Downtime,
    TimeSpan Total)
{
    /// <summary>The rootfs bytes the frozen window carried, over every container (after rounds: only the last changes).</summary>
    public long FrozenRootfsBytes { get; init; }

    /// <summary>Through a registry (--via): REGISTRY/REPO@DIGEST of the pod checkpoint image, which stays there.</summary>
    public string? CheckpointImage { get; init; }

    public MigrationStrategy Strategy { get; init; } = MigrationStrategy.StopCopy;

    /// <summary>Post-copy: the memory that arrived after the switch, over every container.</summary>
    public long BytesAfterSwitch { get; init; }

    /// <summary>Post-copy: from every container running on the target until the last one had all its memory.</summary>
    public TimeSpan? PageTransfer { get; init; }
}
