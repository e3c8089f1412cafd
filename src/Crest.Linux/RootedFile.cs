using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Crest.Linux;

/// <summary>Reads a file of a container's rootfs as the container would see it: every symlink resolved inside that root (RESOLVE_IN_ROOT), never on the host.</summary>
public static class RootedFile
{
    private const ulong ResolveInRoot = 0x10;

    /// <summary>The text of <paramref name="relativePath"/> under <paramref name="root"/>, or null if it does not exist there.</summary>
    public static string? ReadAllText(string root, string relativePath, int maxBytes = 1 << 20)
    {
        var rootFd = Interop.OpenAt(Interop.AT_FDCWD, root, Interop.O_PATH | Interop.O_DIRECTORY | Interop.O_CLOEXEC, 0);
        if (rootFd < 0)
        {
            return null;
        }

        try
        {
            // O_NONBLOCK: a FIFO planted by an image must not hang the daemon; non-regular files are refused below.
            var fd = Interop.Openat2(rootFd, relativePath.TrimStart('/'), (ulong)(Interop.O_RDONLY | Interop.O_CLOEXEC | Interop.O_NONBLOCK), ResolveInRoot | Interop.RESOLVE_NO_MAGICLINKS);
            if (fd < 0)
            {
                var errno = Marshal.GetLastPInvokeError();
                return errno == Interop.ENOENT ? null : throw new IOException($"cannot open {relativePath} in {root}: {Marshal.GetPInvokeErrorMessage(errno)}");
            }

            using var handle = new SafeFileHandle(fd, ownsHandle: true);
            if (Interop.TypeAt(fd, "") is var type && type != Interop.S_IFREG)
            {
                throw new IOException($"{relativePath} in {root} is not a regular file");
            }

            using var stream = new FileStream(handle, FileAccess.Read);
            var buffer = new byte[maxBytes];
            var total = 0;
            int n;
            while (total < maxBytes && (n = stream.Read(buffer, total, maxBytes - total)) > 0)
            {
                total += n;
            }

            return System.Text.Encoding.UTF8.GetString(buffer, 0, total);
        }
        finally
        {
            _ = Interop.Close(rootFd);
        }
    }
}
