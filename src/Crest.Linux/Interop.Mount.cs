using System.Runtime.InteropServices;

namespace Crest.Linux;

internal static partial class Interop
{
    internal const ulong MS_RDONLY = 0x1;
    internal const ulong MS_BIND = 0x1000;
    internal const ulong MS_REC = 0x4000;
    internal const ulong MS_PRIVATE = 1 << 18;
    internal const int MNT_DETACH = 0x2;
    internal const int CLONE_NEWNET = 0x40000000;
    internal const int EINVAL = 22;

    [LibraryImport("libc", EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Mount(string? source, string target, string? fsType, ulong flags, string? data);

    [LibraryImport("libc", EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Umount2(string target, int flags);

    [LibraryImport("libc", EntryPoint = "unshare", SetLastError = true)]
    internal static partial int Unshare(int flags);

    [LibraryImport("libc", EntryPoint = "gettid")]
    internal static partial int GetTid();

    /// <summary>statfs(2) into a buffer larger than struct statfs; its first field (f_type) is a long on 64-bit Linux.</summary>
    [LibraryImport("libc", EntryPoint = "statfs", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static unsafe partial int StatFs(string path, byte* buffer);

    internal const long TMPFS_MAGIC = 0x01021994;
}

/// <summary>The new mount API (Linux 5.12+, glibc 2.36+): a detached copy of a tree, id-mapped, then attached.</summary>
internal static unsafe partial class Interop
{
    internal const uint OPEN_TREE_CLONE = 1;
    internal const uint OPEN_TREE_CLOEXEC = 0x80000;
    internal const uint AT_RECURSIVE = 0x8000;
    internal const ulong MOUNT_ATTR_IDMAP = 0x00100000;
    internal const uint MOVE_MOUNT_F_EMPTY_PATH = 0x4;

    /// <summary>struct mount_attr (MOUNT_ATTR_SIZE_VER0, 32 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct MountAttr
    {
        public ulong AttrSet;
        public ulong AttrClr;
        public ulong Propagation;
        public ulong UsernsFd;
    }

    [LibraryImport("libc", EntryPoint = "open_tree", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int OpenTree(int dirFd, string path, uint flags);

    [LibraryImport("libc", EntryPoint = "mount_setattr", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int MountSetAttr(int dirFd, string path, uint flags, MountAttr* attr, nuint size);

    [LibraryImport("libc", EntryPoint = "move_mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int MoveMount(int fromDirFd, string fromPath, int toDirFd, string toPath, uint flags);
}
