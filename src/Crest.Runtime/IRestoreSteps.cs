using Crest.Core;

namespace Crest.Runtime;

/// <summary>
/// What StartContainer does to a container made from a checkpoint before the runtime restores it. The checkpoint
/// layer implements it (it knows the archive formats); the runtime layer only calls it, so the project graph stays a DAG.
/// </summary>
public interface IRestoreSteps
{
    /// <summary>Options for <c>runtime restore</c> (conmon's --runtime-opt), matching how Crest dumps.</summary>
    IReadOnlyList<string> RuntimeOptions { get; }

    /// <summary>Applies the checkpoint's rootfs diff and deletions to <paramref name="rootfs"/> and recreates missing bind-mount sources.</summary>
    Task ApplyRootfsAsync(string restoreDir, string rootfs, ContainerRecord container, CancellationToken ct);
}

/// <summary>
/// A checkpoint prepared for CreateContainer: <paramref name="StagingDir"/> is a private directory on Crest's root
/// filesystem holding the checkpoint's CRIU images (checkpoint/), rootfs diff and bind-mount list, moved into the
/// container's own restore directory at create; <paramref name="LogCopy"/> names the old log file inside it.
/// </summary>
public sealed record ContainerRestore(string StagingDir, string? LogCopy);
