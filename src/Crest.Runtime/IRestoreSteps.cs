using Crest.Core;

namespace Crest.Runtime;

/// <summary>
/// The part of a restore plan's execution that reads the checkpoint's own formats: StartContainer applies the rootfs
/// changes (the diff, deleted.files, bind-mount sources) through it before the runtime restores. The checkpoint layer
/// implements it; the runtime layer only calls it, so the project graph stays a DAG.
/// </summary>
public interface IRestoreSteps
{
    /// <summary>Applies the checkpoint's rootfs diff and deletions to <paramref name="rootfs"/> and recreates missing bind-mount sources.</summary>
    Task ApplyRootfsAsync(string restoreDir, string rootfs, ContainerRecord container, CancellationToken ct);

    /// <summary>StartContainer ran the restore of <paramref name="container"/> in <paramref name="sandbox"/> (it is now RUNNING, or EXITED with StartError).</summary>
    Task RestoreFinishedAsync(ContainerRecord container, SandboxRecord sandbox, CancellationToken ct);
}
