using System.Runtime.InteropServices;

namespace Crest.Linux;

/// <summary>Directory-handle-relative file syscalls: every archive byte reaches the disk through these.</summary>
internal static unsafe partial class Interop
{
    internal const int AT_FDCWD = -100;
    internal const int AT_SYMLINK_NOFOLLOW = 0x100;
    internal const int AT_REMOVEDIR = 0x200;
    internal const int AT_EMPTY_PATH = 0x1000;

    internal const int O_RDWR = 2;
    internal const int O_NONBLOCK = 0x800;
    internal const int O_CREAT = 0x40;
    internal const int O_EXCL = 0x80;
    internal const int O_TRUNC = 0x200;
    internal const int O_DIRECTORY = 0x10000;
    internal const int O_NOFOLLOW = 0x20000;
    internal const int O_CLOEXEC = 0x80000;
    internal const int O_PATH = 0x200000;

    internal const ulong RESOLVE_NO_XDEV = 0x01;
    internal const ulong RESOLVE_NO_MAGICLINKS = 0x02;
    internal const ulong RESOLVE_NO_SYMLINKS = 0x04;
    internal const ulong RESOLVE_BENEATH = 0x08;

    internal const uint S_IFMT = 0xF000;
    internal const uint S_IFDIR = 0x4000;
    internal const uint S_IFREG = 0x8000;
    internal const uint S_IFLNK = 0xA000;
    internal const uint S_IFCHR = 0x2000;
    internal const uint S_IFBLK = 0x6000;
    internal const uint S_IFIFO = 0x1000;

    internal const int ENOENT = 2;
    internal const int EEXIST = 17;
    internal const int ENOTDIR = 20;
    internal const int EISDIR = 21;
    internal const int ENOSPC = 28;
    internal const int ELOOP = 40;
    internal const int EXDEV = 18;
    internal const int ENOTEMPTY = 39;
    internal const int EAGAIN = 11;

    private const long SYS_openat2 = 437;

    [StructLayout(LayoutKind.Sequential)]
    internal struct OpenHow
    {
        public ulong Flags;
        public ulong Mode;
        public ulong Resolve;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial long SyscallOpenat2(long number, int dirFd, string path, OpenHow* how, nuint size);

    internal static int Openat2(int dirFd, string path, ulong flags, ulong resolve)
    {
        var how = new OpenHow { Flags = flags, Mode = 0, Resolve = resolve };
        return (int)SyscallOpenat2(SYS_openat2, dirFd, path, &how, (nuint)sizeof(OpenHow));
    }

    [LibraryImport("libc", EntryPoint = "openat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int OpenAt(int dirFd, string path, int flags, uint mode);

    [LibraryImport("libc", EntryPoint = "mkdirat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int MkdirAt(int dirFd, string path, uint mode);

    [LibraryImport("libc", EntryPoint = "mknodat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int MknodAt(int dirFd, string path, uint mode, ulong device);

    [LibraryImport("libc", EntryPoint = "symlinkat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int SymlinkAt(string target, int dirFd, string linkPath);

    [LibraryImport("libc", EntryPoint = "linkat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int LinkAt(int oldDirFd, string oldPath, int newDirFd, string newPath, int flags);

    [LibraryImport("libc", EntryPoint = "unlinkat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int UnlinkAt(int dirFd, string path, int flags);

    [LibraryImport("libc", EntryPoint = "fchownat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int FchownAt(int dirFd, string path, uint uid, uint gid, int flags);

    [LibraryImport("libc", EntryPoint = "fchmodat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int FchmodAt(int dirFd, string path, uint mode, int flags);

    [LibraryImport("libc", EntryPoint = "fchown", SetLastError = true)]
    internal static partial int Fchown(int fd, uint uid, uint gid);

    [LibraryImport("libc", EntryPoint = "fchmod", SetLastError = true)]
    internal static partial int Fchmod(int fd, uint mode);

    [LibraryImport("libc", EntryPoint = "utimensat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int UtimensAt(int dirFd, string path, Timespec* times, int flags);

    [LibraryImport("libc", EntryPoint = "futimens", SetLastError = true)]
    internal static partial int Futimens(int fd, Timespec* times);

    [LibraryImport("libc", EntryPoint = "fsetxattr", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Fsetxattr(int fd, string name, byte* value, nuint size, int flags);

    [LibraryImport("libc", EntryPoint = "lsetxattr", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Lsetxattr(string path, string name, byte* value, nuint size, int flags);

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int StatX(int dirFd, string path, int flags, uint mask, byte* buffer);

    internal static ulong MakeDev(uint major, uint minor) =>
        ((ulong)(major & 0xfffff000) << 32) | ((ulong)(major & 0xfff) << 8) | ((ulong)(minor & 0xffffff00) << 12) | (minor & 0xff);

    /// <summary>The S_IFMT type bits of path relative to dirFd without following a final symlink; 0 if it does not exist.</summary>
    internal static uint TypeAt(int dirFd, string path)
    {
        var buffer = stackalloc byte[256];
        if (StatX(dirFd, path, AT_SYMLINK_NOFOLLOW | (path.Length == 0 ? AT_EMPTY_PATH : 0), 0x1, buffer) != 0)
        {
            return 0;
        }

        return *(ushort*)(buffer + 28) & S_IFMT;
    }

    internal static string Errno() => Marshal.GetLastPInvokeErrorMessage();
}
