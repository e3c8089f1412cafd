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
}
