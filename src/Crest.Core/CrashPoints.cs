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
