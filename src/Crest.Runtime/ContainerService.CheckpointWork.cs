using Crest.Core;
using Crest.Linux;
using Crest.Oci;

namespace Crest.Runtime;

/// <summary>[checkpoint] work_in_memory: where CRIU may write a checkpoint's images while the container is frozen.</summary>
public enum CheckpointWorkMemory
{
    /// <summary>Into a tmpfs when the node has the memory for it (<see cref="CheckpointWorkRule"/>), else onto the disk.</summary>
    Auto,

    /// <summary>Always onto the disk, under the container's directory.</summary>
    Never,
}

/// <summary>A checkpoint's work directory; with <see cref="MemoryLimitBytes"/>, a tmpfs of that size is mounted on it.</summary>
public sealed record CheckpointWork(string Path, long? MemoryLimitBytes)
{
    public bool InMemory => MemoryLimitBytes is not null;
}

/// <summary>
/// Whether a checkpoint's images go to memory. Writing them to a tmpfs takes the disk out of the frozen window: CRIU's
/// page writes no longer wait on page-cache writeback of whatever the node wrote before. The archive is then written
/// from the tmpfs to its location after the container runs again, and the tmpfs is unmounted.
/// </summary>
public static class CheckpointWorkRule
{
    /// <summary>Room for CRIU's other images and the rootfs diff, above the container's memory use.</summary>
    public const long Headroom = 64L << 20;

    /// <summary>
    /// The tmpfs limit for a container using <paramref name="containerBytes"/> (its cgroup's memory, page cache included,
    /// which is at least what CRIU writes of it) on a node with <paramref name="availableBytes"/> available: half of what
    /// is available, when the container and the headroom fit in that half; null (the disk) otherwise. The limit is a
    /// ceiling, not an allocation: a tmpfs takes memory only for what is written to it.
    /// </summary>
    public static long? MemoryLimit(CheckpointWorkMemory mode, ulong containerBytes, long availableBytes)
    {
        if (mode == CheckpointWorkMemory.Never || availableBytes <= 0)
        {
            return null;
        }

        var half = availableBytes / 2;
        return containerBytes <= (ulong)Math.Max(0, half - Headroom) ? half : null;
    }
}

// Where a checkpoint's CRIU images are written while the container is frozen.
public sealed partial class ContainerService
{
    /// <summary>
    /// Makes a checkpoint's work directory at <paramref name="path"/> (0700), with a tmpfs on it when
    /// <see cref="CheckpointWorkRule.MemoryLimit"/> says the node has the memory; <see cref="RemoveCheckpointWork"/> undoes both.
    /// </summary>
    public async Task<CheckpointWork> PrepareCheckpointWorkAsync(ContainerRecord container, string path, CheckpointWorkMemory mode, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(container);
        Directory.CreateDirectory(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        if (mode == CheckpointWorkMemory.Never)
        {
            return new CheckpointWork(path, null);
        }

        var sandbox = await sandboxes.GetAsync(container.SandboxId, ct).ConfigureAwait(false);
        if (linux.CgroupUsage(SpecBuilder.CgroupsPathOf(sandbox, container.Id)) is not { } usage
            || CheckpointWorkRule.MemoryLimit(mode, usage.MemoryUsageBytes, linux.MemoryAvailableBytes()) is not { } limit)
        {
            return new CheckpointWork(path, null);
        }

        linux.Mount("tmpfs", path, "tmpfs", MountOptions.NoSuid | MountOptions.NoDev | MountOptions.NoExec,
            FormattableString.Invariant($"size={limit},mode=0700"));
        return new CheckpointWork(path, limit);
    }

    /// <summary>Unmounts a checkpoint's work directory (when it is a mount) and deletes it; a missing one is not an error.</summary>
    public void RemoveCheckpointWork(string path)
    {
        if (FileKinds.IsSymlink(path) || File.Exists(path))
        {
            File.Delete(path);
        }
        else if (Directory.Exists(path))
        {
            // A tmpfs goes with what is in it; a plain directory is not a mount point, which unmount ignores.
            linux.Unmount(path);
            Directory.Delete(path, recursive: true);
        }
    }
}
