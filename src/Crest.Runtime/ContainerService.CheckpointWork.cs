using Crest.Core;
using Crest.Images;
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
    /// The tmpfs limit for a checkpoint that writes at most <paramref name="containerBytes"/> (the container's cgroup memory,
    /// page cache included, which is at least what CRIU writes of it, plus its upper dir and log) on a node with
    /// <paramref name="availableBytes"/> available (less what other checkpoints' tmpfs may still take): half of what
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
        if (linux.CgroupUsage(SpecBuilder.CgroupsPathOf(sandbox, container.Id)) is not { } usage)
        {
            return new CheckpointWork(path, null);
        }

        long available;
        try
        {
            available = linux.MemoryAvailableBytes();
        }
        catch (CrestException)
        {
            return new CheckpointWork(path, null);
        }

        // What goes in: CRIU's images (at most the container's memory), the rootfs diff (its upper dir) and the log copy.
        var upper = bundles.For(container.Id).Upper;
        var log = container.LogFile.Length > 0 && FileKinds.IsRegularFile(container.LogFile) ? new FileInfo(container.LogFile).Length : 0;
        var estimate = usage.MemoryUsageBytes + (ulong)ImageService.Usage(upper, upper).Bytes + (ulong)log;
        lock (_checkpointMemory)
        {
            // Checkpoints running at once share what is available: each counts what the others may still write.
            var reserved = _checkpointMemory.Values.Sum();
            if (CheckpointWorkRule.MemoryLimit(mode, estimate, available - reserved) is not { } limit)
            {
                return new CheckpointWork(path, null);
            }

            linux.Mount("tmpfs", path, "tmpfs", MountOptions.NoSuid | MountOptions.NoDev | MountOptions.NoExec,
                FormattableString.Invariant($"size={limit},mode=0700"));
            _checkpointMemory[path] = (long)Math.Min(estimate, long.MaxValue);
            return new CheckpointWork(path, limit);
        }
    }

    /// <summary>The memory each checkpoint's tmpfs may still take, by work directory, until it is removed.</summary>
    private readonly Dictionary<string, long> _checkpointMemory = new(StringComparer.Ordinal);

    /// <summary>Unmounts a checkpoint's work directory (when it is a mount) and deletes it; a missing one is not an error.</summary>
    public void RemoveCheckpointWork(string path)
    {
        if (FileKinds.IsDirectory(path))
        {
            // A tmpfs goes with what is in it; a plain directory is not a mount point, which unmount ignores.
            linux.Unmount(path);
        }

        FileKinds.Remove(path);

        lock (_checkpointMemory)
        {
            _checkpointMemory.Remove(path);
        }
    }
}
