namespace Crest.Core;

/// <summary>
/// Test hooks for crash consistency: when crestd runs with <c>CREST_TEST_CRASH_AT=NAME</c> in its environment, reaching
/// the crash point NAME kills crestd with SIGKILL on the spot, as an operator's <c>kill -9</c> would at that moment.
/// Without the variable (production) a crash point costs one comparison. Names are listed in docs/crash-points.md.
/// </summary>
public static class CrashPoints
{
    public const string Variable = "CREST_TEST_CRASH_AT";

    /// <summary>CheckpointPod: every selected container paused and dumped, the pod's shared state saved, nothing resumed yet.</summary>
    public const string PodCheckpointFrozen = "pod-checkpoint-frozen";

    /// <summary>CheckpointPod: the containers resumed and the first container archive written, pod.json not yet.</summary>
    public const string PodCheckpointWriting = "pod-checkpoint-writing";

    /// <summary>RestorePod: the new pod sandbox made and its shared state restored, the first container created, the others not.</summary>
    public const string PodRestoreContainers = "pod-restore-containers";

    /// <summary>StartContainer of a restored container: the restore recorded as begun, CRIU not run yet.</summary>
    public const string ContainerRestoreBegun = "container-restore-begun";

    /// <summary>StartContainer of a restored container: CRIU restored the process, the record still says CREATED.</summary>
    public const string ContainerRestoreUnrecorded = "container-restore-unrecorded";

    /// <summary>RunPodSandbox: the pod's network namespace file made, not yet recorded, CNI not run.</summary>
    public const string SandboxNetnsMade = "sandbox-netns-made";

    /// <summary>RunPodSandbox: CNI ADD done (an address leased, a veth made), its result not yet recorded.</summary>
    public const string SandboxCniAdded = "sandbox-cni-added";

    /// <summary>RunPodSandbox: the infra process created and started, its pid not yet recorded, the pod still Creating.</summary>
    public const string SandboxInfraStarted = "sandbox-infra-started";

    /// <summary>CreateContainer: the overlay rootfs mounted, no spec written, no runtime container.</summary>
    public const string ContainerRootfsMounted = "container-rootfs-mounted";

    /// <summary>StartContainer: conmon and <c>runc create</c> done, the process's pid not yet recorded (the record CREATED with no process).</summary>
    public const string ContainerRuncCreated = "container-runc-created";

    /// <summary>StopPodSandbox: every container of the pod stopped, the infra and the network not yet.</summary>
    public const string PodStopContainersStopped = "pod-stop-containers-stopped";

    /// <summary>StopPodSandbox: the infra killed and CNI DEL done, the netns file not yet removed, the pod still recorded ready.</summary>
    public const string PodStopNetworkDeleted = "pod-stop-network-deleted";

    /// <summary>RemovePodSandbox: every container of the pod removed, the sandbox itself not yet.</summary>
    public const string PodRemoveContainersRemoved = "pod-remove-containers-removed";

    /// <summary>CheckpointContainer: the container paused and dumped by CRIU, not yet resumed.</summary>
    public const string CheckpointFrozen = "checkpoint-frozen";

    /// <summary>CheckpointContainer (and each container archive of CheckpointPod): the archive written to its temporary file beside the location, not renamed.</summary>
    public const string CheckpointArchiveWriting = "checkpoint-archive-writing";

    /// <summary>PullImage (any download into the content store): part of a blob written to its ingest file, the rest not yet.</summary>
    public const string ImagePullIngesting = "image-pull-ingesting";

    /// <summary>PullImage: every blob stored and every layer unpacked into a committed snapshot, the image not yet recorded.</summary>
    public const string ImagePullUnpacked = "image-pull-unpacked";

    /// <summary>Image GC (RemoveImage) with something to collect: the image record deleted and unreferenced blobs removed, its snapshots not yet.</summary>
    public const string ImageGcCollecting = "image-gc-collecting";

    /// <summary>CreateContainer restoring a checkpoint: the archive unpacked into its staging directory under &lt;root&gt;/restores, no plan checked, no container.</summary>
    public const string RestoreStagingUnpacked = "restore-staging-unpacked";

    /// <summary>StartContainer: <c>runc start</c> done, the record still CREATED.</summary>
    public const string ContainerStartedUnrecorded = "container-started-unrecorded";

    /// <summary>Migration Freeze on the source: the container frozen and held, its archive written under &lt;root&gt;/migrations, Freeze not answered.</summary>
    public const string MigrationSourceFrozen = "migration-source-frozen";

    /// <summary>Migration WriteArchive on the target: the first chunk of the archive written, the rest not received.</summary>
    public const string MigrationArchiveReceiving = "migration-archive-receiving";

    /// <summary>Migration KillFrozen on the source (the target runs the copy): called, the frozen source not killed yet.</summary>
    public const string MigrationSourceKilling = "migration-source-killing";

    /// <summary>Migration FreezePod on the source: every container of the pod frozen and held, the pod checkpoint written under &lt;root&gt;/migrations, FreezePod not answered.</summary>
    public const string MigrationPodFrozen = "migration-pod-frozen";

    private static readonly string? Armed = Environment.GetEnvironmentVariable(Variable);

    /// <summary>Dies here (SIGKILL) when this crash point is armed.</summary>
    public static void Hit(string name)
    {
        if (Armed is not null && string.Equals(Armed, name, StringComparison.Ordinal))
        {
            // Process.Kill is SIGKILL on Linux: no finally block, no disposal, no flush runs after this line.
            using var self = System.Diagnostics.Process.GetCurrentProcess();
            self.Kill();
        }
    }
}
