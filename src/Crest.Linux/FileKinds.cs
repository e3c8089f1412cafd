using System.Runtime.InteropServices;

namespace Crest.Linux;

/// <summary>File type checks that .NET's FileInfo does not offer (sockets, FIFOs, devices), without following links.</summary>
public static partial class FileKinds
{
    private const uint S_IFMT = 0xF000;
    private const uint S_IFSOCK = 0xC000;

    public static bool IsSocket(string path) => TryGetMode(path, out var mode) && (mode & S_IFMT) == S_IFSOCK;

    /// <summary>Opens a FIFO for writing without blocking (fails with ENXIO when nobody reads it); -1 on failure.</summary>
    public static int OpenWriteNonBlocking(string path) =>
        Interop.OpenAt(Interop.AT_FDCWD, path, Interop.O_WRONLY | Interop.O_NONBLOCK | Interop.O_CLOEXEC | Interop.O_NOFOLLOW, 0);

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
