namespace Crest.Core;

/// <summary>How a pod or container shares a Linux namespace (CRI NamespaceMode).</summary>
public enum NamespaceMode
{
    Pod = 0,
    Container = 1,
    Node = 2,
    Target = 3,
}

/// <summary>
/// CRI NamespaceOption. Absent fields take the proto's zero value, POD, as api.proto says ("The CRI default is POD"); the kubelet sends CONTAINER for pid explicitly.
/// <paramref name="User"/> is the exception: no userns_options means the node's user namespace, as the kubelet means it.
/// </summary>
public sealed record NamespaceOptions(NamespaceMode Network = NamespaceMode.Pod, NamespaceMode Pid = NamespaceMode.Pod, NamespaceMode Ipc = NamespaceMode.Pod, string? TargetId = null,
    UserNamespaceOptions? User = null)
{
    /// <summary>True when the pod gets a user namespace of its own (userns_options with mode POD).</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool HasPodUserNamespace => User is { Mode: NamespaceMode.Pod };
}

/// <summary>One range of a user namespace's uid or gid map (CRI IDMapping): <paramref name="Length"/> ids from <paramref name="ContainerId"/> inside are <paramref name="HostId"/>... outside.</summary>
public sealed record IdMapping(uint HostId, uint ContainerId, uint Length);

/// <summary>CRI UserNamespace: POD (a user namespace of the pod's own, with these maps) or NODE (the host's).</summary>
public sealed record UserNamespaceOptions(NamespaceMode Mode, IReadOnlyList<IdMapping> Uids, IReadOnlyList<IdMapping> Gids)
{
    /// <summary>The host uid and gid that are root (0) inside the pod's namespace; valid after validation (one mapping each, from container id 0).</summary>
    public (uint Uid, uint Gid) HostRoot() => (Uids[0].HostId, Gids[0].HostId);
}

public sealed record PortMapping(string Protocol, int ContainerPort, int HostPort, string? HostIp);

public sealed record DnsConfig(IReadOnlyList<string> Servers, IReadOnlyList<string> Searches, IReadOnlyList<string> Options);

/// <summary>Pod annotations Crest itself understands (CRI has no field for them).</summary>
public static class PodAnnotations
{
    /// <summary>
    /// The addresses the pod network is asked to give the pod, comma-separated (IP or IP/prefix each): passed to CNI
    /// plugins with the <c>ips</c> capability as <c>runtimeConfig.ips</c> (host-local honours it). A live migration
    /// that keeps the pod's address (<c>crest migrate --keep-address</c>) sets it on the target pod.
    /// </summary>
    public const string NetworkIps = "io.crest.network.ips";
}

/// <summary>What a pod was asked to be (from CRI PodSandboxConfig), as the domain sees it.</summary>
public sealed record PodSpec
{
    public required string Name { get; init; }
    public required string Uid { get; init; }
    public required string Namespace { get; init; }
    public uint Attempt { get; init; }
    public string Hostname { get; init; } = "";
    public string LogDirectory { get; init; } = "";
    public DnsConfig? Dns { get; init; }
    public IReadOnlyList<PortMapping> PortMappings { get; init; } = [];
    public IReadOnlyDictionary<string, string> Labels { get; init; } = new Dictionary<string, string>();
    public IReadOnlyDictionary<string, string> Annotations { get; init; } = new Dictionary<string, string>();
    public string CgroupParent { get; init; } = "";
    public IReadOnlyDictionary<string, string> Sysctls { get; init; } = new Dictionary<string, string>();
    public NamespaceOptions Namespaces { get; init; } = new();
    public bool Privileged { get; init; }
    public string RuntimeHandler { get; init; } = "";
}

public enum SandboxState
{
    /// <summary>Written before any side effect; recovery rolls it back.</summary>
    Creating,
    Ready,
    NotReady,
}

/// <summary>A pod sandbox as Crest stores it.</summary>
public sealed record SandboxRecord
{
    public required string Id { get; init; }
    public required PodSpec Spec { get; init; }
    public required SandboxState State { get; init; }
    public required DateTimeOffset CreatedAt { get; init; }
    public required string RuntimeHandler { get; init; }
    public string? NetnsPath { get; init; }
    public IReadOnlyList<string> Ips { get; init; } = [];
    public string? CniResult { get; init; }
    public string? CniNetwork { get; init; }

    /// <summary>The network configuration used at ADD, replayed at DEL even if the conf dir changed since.</summary>
    public string? CniConfig { get; init; }
    public int InfraPid { get; init; }

    /// <summary>The infra's IPC, UTS and PID namespaces pinned by bind mounts (type -> file), so containers never join a reused pid's namespaces.</summary>
    public IReadOnlyDictionary<string, string> PinnedNamespaces { get; init; } = new Dictionary<string, string>();
    public string CgroupsPath { get; init; } = "";
}

/// <summary>
/// A bind mount from the host. <paramref name="RecursiveReadOnly"/>: every mount below the source is read-only too
/// (CRI recursive_read_only; needs <paramref name="ReadOnly"/> and private propagation, or a submount could turn writable).
/// </summary>
public sealed record MountSpec(string ContainerPath, string HostPath, bool ReadOnly, string Propagation = "private", bool Recursive = true, bool RecursiveReadOnly = false);

public sealed record DeviceSpec(string ContainerPath, string HostPath, string Permissions);

public sealed record ResourceSpec(long CpuPeriod = 0, long CpuQuota = 0, long CpuShares = 0, long MemoryLimitBytes = 0, string CpusetCpus = "", string CpusetMems = "");

public enum SeccompMode
{
    Unconfined,
    RuntimeDefault,
    Localhost,
}

/// <summary>How a container's supplementary groups are made (CRI SupplementalGroupsPolicy).</summary>
public enum SupplementalGroupsPolicy
{
    /// <summary>The groups the image's /etc/group gives the user, plus the requested ones (Kubernetes' default).</summary>
    Merge = 0,

    /// <summary>Only the primary group and the requested ones: the image's /etc/group is not consulted.</summary>
    Strict = 1,
}

/// <summary>Who a container's processes run as, resolved at CreateContainer (CRI ContainerUser.linux).</summary>
public sealed record ProcessUser(uint Uid, uint Gid, IReadOnlyList<uint> Groups);

public sealed record SecuritySpec
{
    public bool Privileged { get; init; }
    public IReadOnlyList<string> AddCapabilities { get; init; } = [];
    public IReadOnlyList<string> DropCapabilities { get; init; } = [];
    public long? RunAsUser { get; init; }
    public long? RunAsGroup { get; init; }
    public string? RunAsUsername { get; init; }
    public bool RunAsNonRoot { get; init; }
    public IReadOnlyList<long> SupplementalGroups { get; init; } = [];
    public SupplementalGroupsPolicy SupplementalGroupsPolicy { get; init; }
    public bool ReadOnlyRootfs { get; init; }
    public bool NoNewPrivileges { get; init; }
    public SeccompMode Seccomp { get; init; } = SeccompMode.Unconfined;
    public string? SeccompLocalhostPath { get; init; }
    public IReadOnlyList<string>? MaskedPaths { get; init; }
    public IReadOnlyList<string>? ReadonlyPaths { get; init; }
    public NamespaceOptions Namespaces { get; init; } = new();
}

/// <summary>What a container was asked to be (from CRI ContainerConfig), as the domain sees it.</summary>
public sealed record ContainerSpec
{
    public required string Name { get; init; }
    public uint Attempt { get; init; }
    public required string Image { get; init; }
    public string? UserSpecifiedImage { get; init; }
    public IReadOnlyList<string> Command { get; init; } = [];
    public IReadOnlyList<string> Args { get; init; } = [];
    public string WorkingDir { get; init; } = "";
    public IReadOnlyList<KeyValuePair<string, string>> Envs { get; init; } = [];
    public IReadOnlyList<MountSpec> Mounts { get; init; } = [];
    public IReadOnlyList<DeviceSpec> Devices { get; init; } = [];
    public IReadOnlyDictionary<string, string> Labels { get; init; } = new Dictionary<string, string>();
    public IReadOnlyDictionary<string, string> Annotations { get; init; } = new Dictionary<string, string>();
    /// <summary>
    /// When set, the annotations written into the OCI spec instead of <see cref="Annotations"/>: a restored container
    /// shows the checkpoint's annotations through the CRI, but runc, crun and CRIU (org.criu.config, org.systemd.*,
    /// run.oci.*) only ever see the request's.
    /// </summary>
    public IReadOnlyDictionary<string, string>? RuntimeAnnotations { get; init; }
    public string LogPath { get; init; } = "";
    public bool Stdin { get; init; }
    public bool StdinOnce { get; init; }
    public bool Tty { get; init; }
    public ResourceSpec Resources { get; init; } = new();
    public SecuritySpec Security { get; init; } = new();
}

public enum ContainerState
{
    /// <summary>Written before any side effect; recovery rolls it back.</summary>
    Creating,
    Created,
    Running,
    Exited,
    Unknown,
}

/// <summary>A container as Crest stores it.</summary>
public sealed record ContainerRecord
{
    public required string Id { get; init; }
    public required string SandboxId { get; init; }
    public required ContainerSpec Spec { get; init; }
    public required ContainerState State { get; init; }
    public required DateTimeOffset CreatedAt { get; init; }
    public DateTimeOffset? StartedAt { get; init; }
    public DateTimeOffset? FinishedAt { get; init; }
    public int ExitCode { get; init; }
    public string Reason { get; init; } = "";
    public string Message { get; init; } = "";
    public int Pid { get; init; }
    public required string ImageId { get; init; }
    public required string ImageRef { get; init; }
    public string? SnapshotKey { get; init; }
    public required string RuntimeHandler { get; init; }
    /// <summary>Full path of the CRI log file (sandbox log_directory + log_path), or empty.</summary>
    public string LogFile { get; init; } = "";

    /// <summary>The signal StopContainer sends first, resolved from the image at create time.</summary>
    public int StopSignal { get; init; } = 15;

    /// <summary>The user, group and supplementary groups its processes run as (exec included), resolved at create time.</summary>
    public ProcessUser? User { get; init; }

    /// <summary>
    /// Set from CreateContainer until StartContainer for a container made from a checkpoint: the private (0700)
    /// directory holding the checkpoint's CRIU images, rootfs diff and bind-mount list. Start restores instead of starting.
    /// </summary>
    public string? RestoreDir { get; init; }

    /// <summary>How CRIU restores it at StartContainer: the restore plan's choice, recorded at create with <see cref="RestoreDir"/>.</summary>
    public CriuRestoreOptions? RestoreCriu { get; init; }

    /// <summary>
    /// When StartContainer handed a restored container to CRIU, recorded before CRIU runs: a crestd that restarts and
    /// finds it still CREATED knows the restore was interrupted (the process is adopted if it runs, else StartError).
    /// </summary>
    public DateTimeOffset? RestoreStartedAt { get; init; }

    /// <summary>The container was made from a checkpoint (CRI-O reports this as info.restored).</summary>
    public bool Restored { get; init; }

    /// <summary>
    /// Set while a live migration keeps this container frozen on its source (from its checkpoint until the migration
    /// resumes or kills it): crestd's restart keeps such a container frozen instead of resuming it, as its copy may
    /// already run on the target. Cleared by Resume, KillFrozen, a stop or removal, and by the container's exit.
    /// </summary>
    public MigrationHold? MigrationHold { get; init; }

    /// <summary>
    /// CREATED with no process yet: as in containerd, the runtime (conmon + <c>runc create</c>, or CRIU for a restore)
    /// runs at StartContainer, so a created container holds a rootfs and a bundle but nothing that runs or can exit.
    /// </summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool AwaitsProcess => State == ContainerState.Created && Pid == 0;
}

/// <summary>
/// A migration source left frozen on purpose: since when, and (post-copy) the <c>runc checkpoint --lazy-pages</c> process
/// whose CRIU serves the memory, which leads a process group of its own and outlives a crestd that dies meanwhile.
/// </summary>
public sealed record MigrationHold(DateTimeOffset Since)
{
    /// <summary>Post-copy: the page server's runc process (and process group) id; 0 for a stop-copy freeze.</summary>
    public int PageServerPid { get; init; }
}

/// <summary>Seam over where sandbox and container records live.</summary>
public interface IRuntimeStore
{
    Task PutSandboxAsync(SandboxRecord sandbox, CancellationToken ct);

    Task<SandboxRecord?> GetSandboxAsync(string id, CancellationToken ct);

    Task<IReadOnlyList<SandboxRecord>> ListSandboxesAsync(CancellationToken ct);

    Task DeleteSandboxAsync(string id, CancellationToken ct);

    /// <summary>
    /// Writes the record only if its sandbox is still on record in state <paramref name="expected"/>; false otherwise.
    /// For writers that hold no lock on the sandbox (a list noticing a dead infra), so a record removed or moved on
    /// meanwhile is never written back.
    /// </summary>
    Task<bool> TryUpdateSandboxAsync(SandboxRecord sandbox, SandboxState expected, CancellationToken ct);

    Task PutContainerAsync(ContainerRecord container, CancellationToken ct);

    Task<ContainerRecord?> GetContainerAsync(string id, CancellationToken ct);

    Task<IReadOnlyList<ContainerRecord>> ListContainersAsync(CancellationToken ct);

    Task DeleteContainerAsync(string id, CancellationToken ct);

    /// <summary>The same as <see cref="TryUpdateSandboxAsync"/> for a container (a list reading conmon's exit file).</summary>
    Task<bool> TryUpdateContainerAsync(ContainerRecord container, ContainerState expected, CancellationToken ct);
}
