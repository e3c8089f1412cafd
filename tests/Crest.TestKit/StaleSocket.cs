using System.Runtime.InteropServices;
using System.Text;

namespace Crest.TestKit;

/// <summary>
/// Leaves a bound-but-dead unix socket file, as a crashed daemon does. .NET's Socket unlinks the file it
/// bound on dispose, so this goes through socket(2), bind(2) and close(2) directly.
/// </summary>
public static partial class StaleSocket
{
    public static unsafe void Create(string path)
    {
        var fd = Socket(1, 1, 0);
        if (fd < 0)
        {
            throw new IOException($"socket() failed: {Marshal.GetLastPInvokeErrorMessage()}");
        }

        try
        {
            var address = new byte[110];
            address[0] = 1; // AF_UNIX, little-endian sa_family_t
            Encoding.UTF8.GetBytes(path).CopyTo(address, 2);
            fixed (byte* a = address)
            {
                if (Bind(fd, a, address.Length) != 0)
                {
                    throw new IOException($"bind({path}) failed: {Marshal.GetLastPInvokeErrorMessage()}");
                }
            }
        }
        finally
        {
            _ = Close(fd);
        }
    }

    [LibraryImport("libc", EntryPoint = "socket", SetLastError = true)]
    private static partial int Socket(int domain, int type, int protocol);

    [LibraryImport("libc", EntryPoint = "bind", SetLastError = true)]
    private static unsafe partial int Bind(int fd, byte* address, int length);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int Close(int fd);
}
