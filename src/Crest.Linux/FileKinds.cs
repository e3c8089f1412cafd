using System.Runtime.InteropServices;

namespace Crest.Linux;

/// <summary>File type checks that .NET's FileInfo does not offer (sockets, FIFOs, devices), without following links.</summary>
public static partial class FileKinds
{
    private const uint S_IFMT = 0xF000;
    private const uint S_IFSOCK = 0xC000;

    private const uint S_IFREG = 0x8000;
    private const uint S_IFDIR = 0x4000;
    private const uint S_IFLNK = 0xA000;

    public static bool IsSocket(string path) => TryGetMode(path, out var mode) && (mode & S_IFMT) == S_IFSOCK;

    /// <summary>A regular file itself, not a link to one (lstat).</summary>
    public static bool IsRegularFile(string path) => TryGetMode(path, out var mode) && (mode & S_IFMT) == S_IFREG;

    public static bool IsDirectory(string path) => TryGetMode(path, out var mode) && (mode & S_IFMT) == S_IFDIR;

    public static bool IsSymlink(string path) => TryGetMode(path, out var mode) && (mode & S_IFMT) == S_IFLNK;

    /// <summary>Deletes <paramref name="path"/>: a link or file itself (never what a link points to), or a directory tree; a missing one is not an error.</summary>
    public static void Remove(string path)
    {
        if (IsSymlink(path) || File.Exists(path))
        {
            File.Delete(path);
        }
        else if (Directory.Exists(path))
        {
            Directory.Delete(path, recursive: true);
        }
    }

    /// <summary>Creates or truncates a file for writing (mode 0600 when new) with O_NOFOLLOW: a symlink planted at the path fails instead of being written through.</summary>
    public static Microsoft.Win32.SafeHandles.SafeFileHandle CreateNoFollow(string path)
    {
        const int O_CREAT = 0x40;
        const int O_TRUNC = 0x200;
        var fd = Interop.OpenAt(Interop.AT_FDCWD, path, Interop.O_WRONLY | O_CREAT | O_TRUNC | Interop.O_CLOEXEC | Interop.O_NOFOLLOW, 0x180);
        if (fd < 0)
        {
            throw new IOException($"cannot create {path} without following links: {Interop.Errno()}");
        }

        var handle = new Microsoft.Win32.SafeHandles.SafeFileHandle(fd, ownsHandle: true);
        if (Interop.TypeAt(fd, "") != Interop.S_IFREG)
        {
            handle.Dispose();
            throw new IOException($"{path} is not a regular file");
        }

        return handle;
    }

    /// <summary>
    /// Gives the open regular file <paramref name="file"/> a second name, <paramref name="destination"/> (a new hard
    /// link, through /proc/self/fd so the file is the one opened, not whatever its path names now). False when the
    /// filesystem or the kernel will not link it (another filesystem, the link limit): copy it instead.
    /// </summary>
    public static bool TryLinkOpenFile(Microsoft.Win32.SafeHandles.SafeFileHandle file, string destination)
    {
        ArgumentNullException.ThrowIfNull(file);
        const int AT_SYMLINK_FOLLOW = 0x400;
        return Interop.LinkAt(Interop.AT_FDCWD, $"/proc/self/fd/{file.DangerousGetHandle()}", Interop.AT_FDCWD, destination, AT_SYMLINK_FOLLOW) == 0;
    }

    /// <summary>Opens a regular file for reading with O_NOFOLLOW: a symlink in its place fails instead of being followed.</summary>
    public static Microsoft.Win32.SafeHandles.SafeFileHandle OpenReadNoFollow(string path)
    {
        var fd = Interop.OpenAt(Interop.AT_FDCWD, path, Interop.O_RDONLY | Interop.O_CLOEXEC | Interop.O_NOFOLLOW | Interop.O_NONBLOCK, 0);
        if (fd < 0)
        {
            throw new IOException($"cannot open {path} without following links: {Interop.Errno()}");
        }

        var handle = new Microsoft.Win32.SafeHandles.SafeFileHandle(fd, ownsHandle: true);
        if (Interop.TypeAt(fd, "") != Interop.S_IFREG)
        {
            handle.Dispose();
            throw new IOException($"{path} is not a regular file");
        }

        return handle;
    }

    /// <summary>Opens a FIFO for writing without blocking (fails with ENXIO when nobody reads it); -1 on failure.</summary>
    public static int OpenWriteNonBlocking(string path) =>
        Interop.OpenAt(Interop.AT_FDCWD, path, Interop.O_WRONLY | Interop.O_NONBLOCK | Interop.O_CLOEXEC | Interop.O_NOFOLLOW, 0);

    /// <summary>An overlayfs whiteout: a character device with device number 0/0 (lstat).</summary>
    public static unsafe bool IsOverlayWhiteout(string path)
    {
        var buffer = stackalloc byte[256];
        if (StatX(-100, path, 0x100, 0x1, buffer) != 0)
        {
            return false;
        }

        const uint S_IFCHR = 0x2000;
        return (*(ushort*)(buffer + 28) & S_IFMT) == S_IFCHR && *(uint*)(buffer + 128) == 0 && *(uint*)(buffer + 132) == 0;
    }

    /// <summary>An overlayfs opaque directory of an upper layer (xattr trusted.overlay.opaque = "y").</summary>
    public static unsafe bool IsOverlayOpaque(string path)
    {
        var value = stackalloc byte[4];
        var n = LGetXattr(path, "trusted.overlay.opaque", value, 4);
        return n == 1 && value[0] == (byte)'y';
    }

    /// <summary>
    /// A file's identity and change times (lstat through statx, nanoseconds): what a rootfs round compares to decide
    /// whether a file changed since the previous round. False when the path does not exist (any more).
    /// </summary>
    public static unsafe bool TryStamp(string path, out FileStamp stamp)
    {
        // STATX_BASIC_STATS; the offsets are the kernel's struct statx, one layout on every architecture.
        var buffer = stackalloc byte[256];
        if (StatX(-100, path, 0x100, 0x7ff, buffer) != 0)
        {
            stamp = default;
            return false;
        }

        static long Nanos(byte* at) => (*(long*)at * 1_000_000_000L) + *(uint*)(at + 8);
        stamp = new FileStamp(
            Inode: *(ulong*)(buffer + 32),
            Mode: *(ushort*)(buffer + 28),
            Uid: *(uint*)(buffer + 20),
            Gid: *(uint*)(buffer + 24),
            Size: *(long*)(buffer + 40),
            ChangedUnixNanos: Nanos(buffer + 96),
            ModifiedUnixNanos: Nanos(buffer + 112));
        return true;
    }

    /// <summary>
    /// The kernel's coarse wall clock (CLOCK_REALTIME_COARSE) in Unix nanoseconds: the clock file timestamps are taken
    /// from, so a file changed after this call has a change time at or after what it returns (fine-grained timestamps
    /// are never earlier than the coarse clock).
    /// </summary>
    public static unsafe long CoarseRealtimeNanos()
    {
        const int CLOCK_REALTIME_COARSE = 5;
        var ts = stackalloc long[2];
        if (ClockGetTime(CLOCK_REALTIME_COARSE, ts) != 0)
        {
            throw new IOException($"clock_gettime(CLOCK_REALTIME_COARSE) failed: {Interop.Errno()}");
        }

        return (ts[0] * 1_000_000_000L) + ts[1];
    }

    [LibraryImport("libc", EntryPoint = "clock_gettime", SetLastError = true)]
    private static unsafe partial int ClockGetTime(int clock, long* timespec);

    [LibraryImport("libc", EntryPoint = "lgetxattr", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial nint LGetXattr(string path, string name, byte* value, nuint size);

    /// <summary>
    /// The length of <paramref name="relativePath"/> beneath the directory <paramref name="root"/> when it is a regular file
    /// reached without a symlink in any component, without leaving <paramref name="root"/> and without crossing into
    /// another mount (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV); null otherwise.
    /// </summary>
    public static unsafe long? RegularFileLengthBeneath(string root, string relativePath)
    {
        var rootFd = Interop.OpenAt(Interop.AT_FDCWD, root, Interop.O_PATH | Interop.O_DIRECTORY | Interop.O_CLOEXEC | Interop.O_NOFOLLOW, 0);
        if (rootFd < 0)
        {
            return null;
        }

        try
        {
            var fd = Interop.Openat2(rootFd, relativePath, (ulong)(Interop.O_PATH | Interop.O_CLOEXEC),
                Interop.RESOLVE_BENEATH | Interop.RESOLVE_NO_SYMLINKS | Interop.RESOLVE_NO_XDEV | Interop.RESOLVE_NO_MAGICLINKS);
            if (fd < 0)
            {
                return null;
            }

            try
            {
                // statx(fd, "", AT_EMPTY_PATH, STATX_TYPE | STATX_SIZE): the file opened above, not a name looked up again.
                var buffer = stackalloc byte[256];
                if (StatX(fd, "", 0x1000, 0x1 | 0x200, buffer) != 0 || (*(ushort*)(buffer + 28) & S_IFMT) != S_IFREG)
                {
                    return null;
                }

                return *(long*)(buffer + 40);
            }
            finally
            {
                _ = Interop.Close(fd);
            }
        }
        finally
        {
            _ = Interop.Close(rootFd);
        }
    }

    private static unsafe bool TryGetMode(string path, out uint mode)
    {
        // statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_TYPE): one layout on every architecture.
        var buffer = stackalloc byte[256];
        if (StatX(-100, path, 0x100, 0x1, buffer) != 0)
        {
            mode = 0;
            return false;
        }

        mode = *(ushort*)(buffer + 28);
        return true;
    }

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int StatX(int dirFd, string path, int flags, uint mask, byte* statxBuffer);
}

/// <summary>What <see cref="FileKinds.TryStamp"/> reads of a file: its inode, type and mode bits, owner, size, and change and modification times.</summary>
public readonly record struct FileStamp(ulong Inode, uint Mode, uint Uid, uint Gid, long Size, long ChangedUnixNanos, long ModifiedUnixNanos)
{
    public bool IsRegularFile => (Mode & 0xF000) == 0x8000;

    public bool IsDirectory => (Mode & 0xF000) == 0x4000;
}
