using System.Runtime.InteropServices;

namespace Crest.Linux;

/// <summary>Pseudo-terminals, termios and namespaces: what exec with a terminal, the CLI's raw mode and port-forward need.</summary>
internal static unsafe partial class Interop
{
    internal const int O_NOCTTY = 0x100;
    internal const uint TIOCGWINSZ = 0x5413;
    internal const uint TIOCSWINSZ = 0x5414;
    internal const int TCSANOW = 0;

    // glibc's struct termios is 60 bytes on Linux; leave room.
    internal const int TermiosSize = 128;

    [StructLayout(LayoutKind.Sequential)]
    internal struct WinSize
    {
        public ushort Rows;
        public ushort Columns;
        public ushort XPixels;
        public ushort YPixels;
    }

    [LibraryImport("libc", EntryPoint = "posix_openpt", SetLastError = true)]
    internal static partial int PosixOpenPt(int flags);

    [LibraryImport("libc", EntryPoint = "grantpt", SetLastError = true)]
    internal static partial int GrantPt(int fd);

    [LibraryImport("libc", EntryPoint = "unlockpt", SetLastError = true)]
    internal static partial int UnlockPt(int fd);

    [LibraryImport("libc", EntryPoint = "ptsname_r", SetLastError = true)]
    internal static partial int PtsNameR(int fd, byte* buffer, nuint length);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    internal static partial int IoctlWinSize(int fd, nuint request, WinSize* size);

    [LibraryImport("libc", EntryPoint = "isatty", SetLastError = true)]
    internal static partial int IsATty(int fd);

    [LibraryImport("libc", EntryPoint = "tcgetattr", SetLastError = true)]
    internal static partial int TcGetAttr(int fd, byte* termios);

    [LibraryImport("libc", EntryPoint = "tcsetattr", SetLastError = true)]
    internal static partial int TcSetAttr(int fd, int action, byte* termios);

    [LibraryImport("libc", EntryPoint = "cfmakeraw")]
    internal static partial void CfMakeRaw(byte* termios);

    [LibraryImport("libc", EntryPoint = "setns", SetLastError = true)]
    internal static partial int SetNs(int fd, int nsType);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Open(string path, int flags, uint mode);
}
