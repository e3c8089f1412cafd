using Crest.Core;
using Crest.Images;
using Crest.Linux;
using Crest.Oci;

namespace Crest.Runtime;

/// <summary>[checkpoint] work_in_memory: where CRIU may write a checkpoint's images while the container is frozen.</summary>
public enum CheckpointWorkMemory
{
    /// <summary>
    /// Into the page cache of the work directory when the write stays under the kernel's background writeback threshold
    /// (a copy into memory, never throttled); else into a tmpfs when the node has the memory for it
    /// (<see cref="CheckpointWorkRule"/>); else onto the disk.
    /// </summary>
    Auto,

    /// <summary>Into a tmpfs whenever the node has the memory for it, else onto the disk.</summary>
    Tmpfs,

    /// <summary>Always onto the disk, under the container's directory.</summary>
    Never,
}

/// <summary>Where a checkpoint's work directory keeps CRIU's images.</summary>
public enum CheckpointWorkPlace
{
    /// <summary>A directory on the node's disk, written when the page cache has room under its writeback threshold.</summary>
    PageCache,

    /// <summary>A tmpfs mounted on the work directory.</summary>
    Tmpfs,

    /// <summary>A directory on the node's disk, whatever the page cache holds.</summary>
    Disk,
}

/// <summary>A checkpoint's work directory; with <see cref="MemoryLimitBytes"/>, a tmpfs of that size is mounted on it.</summary>
public sealed record CheckpointWork(string Path, long? MemoryLimitBytes, CheckpointWorkPlace Place = CheckpointWorkPlace.Disk)
{
    public bool InMemory => MemoryLimitBytes is not null;

    /// <summary>How the checkpoint log names where the images went.</summary>
    public string Describe() => Place switch
    {
        CheckpointWorkPlace.Tmpfs => "memory (tmpfs)",
        CheckpointWorkPlace.PageCache => "the page cache (under the writeback threshold)",
        _ => "disk",
    };
}

/// <summary>
/// Where a checkpoint's images go. Under the kernel's background writeback threshold the page cache is the fastest place
/// (on the 2-core VM, CRIU wrote a gigabyte there in 0.28-0.33 s against 0.45-0.57 s into a tmpfs); above it, CRIU's page
/// writes could wait on writeback of whatever the node wrote before, and a tmpfs takes the disk out of the frozen
/// window. The archive is written from the work directory after the container runs again, and the directory removed
/// (with its tmpfs, or with its page cache, usually before it was written back: writeback starts when the archive's own
/// writes cross the threshold, or after vm.dirty_expire_centisecs for a migration's held checkpoint). The threshold is
/// the node's; a memory cgroup's own writeback limits (cgroup v2) are not read.
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

    /// <summary>
    /// Whether a checkpoint that writes at most <paramref name="containerBytes"/> goes to the page cache: only in
    /// <see cref="CheckpointWorkMemory.Auto"/>, only when that and <paramref name="reservedBytes"/> (what other
    /// checkpoints still write) stay under the background writeback threshold with the headroom to spare, and only when
    /// the work directory's filesystem has that much free (<paramref name="diskFreeBytes"/>): the page cache is written
    /// back to it in the end unless the directory goes first.
    /// </summary>
    public static bool UsesPageCache(CheckpointWorkMemory mode, ulong containerBytes, DirtyPageCache pageCache, long reservedBytes, long diskFreeBytes)
    {
        ArgumentNullException.ThrowIfNull(pageCache);
        if (mode != CheckpointWorkMemory.Auto || containerBytes > long.MaxValue / 4)
        {
            return false;
        }

        var needed = (long)containerBytes + Headroom + Math.Max(0, reservedBytes);
        return pageCache.Takes(needed) && diskFreeBytes >= needed;
    }
}

// Where a checkpoint's CRIU images are written while the container is frozen.
public sealed partial class ContainerService
{
    /// <summary>
    /// Makes a checkpoint's work directory at <paramref name="path"/> (0700): a plain directory when
    /// <see cref="CheckpointWorkRule.UsesPageCache"/> says the page cache takes the images without writeback, else with a
    /// tmpfs on it when <see cref="CheckpointWorkRule.MemoryLimit"/> says the node has the memory; <see cref="RemoveCheckpointWork"/> undoes both.
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

        DirtyPageCache? pageCache = null;
        long diskFree = 0;
        try
        {
            if (mode == CheckpointWorkMemory.Auto)
            {
                pageCache = linux.DirtyPageCache();
                diskFree = linux.FreeBytes(path);
            }
        }
        catch (Exception e) when (e is CrestException or IOException or UnauthorizedAccessException or FormatException or OverflowException)
        {
            // Without the writeback state or the disk's free space the page cache is not chosen; a tmpfs still is when it fits.
            pageCache = null;
        }

        // What goes in: CRIU's images (at most the container's memory), the rootfs diff (its upper dir) and the log copy.
        var upper = bundles.For(container.Id).Upper;
        var log = container.LogFile.Length > 0 && FileKinds.IsRegularFile(container.LogFile) ? new FileInfo(container.LogFile).Length : 0;
        var estimate = usage.MemoryUsageBytes + (ulong)ImageService.Usage(upper, upper).Bytes + (ulong)log;
        lock (_checkpointMemory)
        {
            // Checkpoints running at once share what is available: each counts what the others may still write.
            var reserved = _checkpointMemory.Values.Sum();
            if (pageCache is not null && CheckpointWorkRule.UsesPageCache(mode, estimate, pageCache, reserved, diskFree))
            {
                _checkpointMemory[path] = (long)estimate;
                return new CheckpointWork(path, null, CheckpointWorkPlace.PageCache);
            }

            if (CheckpointWorkRule.MemoryLimit(mode, estimate, available - reserved) is not { } limit)
            {
                return new CheckpointWork(path, null);
            }

            linux.Mount("tmpfs", path, "tmpfs", MountOptions.NoSuid | MountOptions.NoDev | MountOptions.NoExec,
                FormattableString.Invariant($"size={limit},mode=0700"));
            _checkpointMemory[path] = (long)Math.Min(estimate, long.MaxValue);
            return new CheckpointWork(path, limit, CheckpointWorkPlace.Tmpfs);
        }
    }

    /// <summary>The memory each checkpoint's tmpfs or page cache may still take, by work directory, until it is removed.</summary>
    private readonly Dictionary<string, long> _checkpointMemory = new(StringComparer.Ordinal);

    /// <summary>Unmounts a checkpoint's work directory (when it is a mount) and deletes it; a missing one is not an error.</summary>
    public void RemoveCheckpointWork(string path)
    {
        try
        {
            if (FileKinds.IsDirectory(path))
            {
                // A tmpfs goes with what is in it; a plain directory is not a mount point, which unmount ignores.
                linux.Unmount(path);
            }

            FileKinds.Remove(path);
        }
        finally
        {
            // Given back even when the removal failed (the caller logs it): a stale share would keep later checkpoints
            // out of the page cache and shrink their tmpfs until crestd restarts.
            lock (_checkpointMemory)
            {
                _checkpointMemory.Remove(path);
            }
        }
    }
}
