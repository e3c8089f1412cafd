using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Crest.Linux;

/// <summary>
/// A pseudo-terminal pair: crestd keeps the master and a child opens <see cref="SecondaryPath"/> as its
/// controlling terminal (see <see cref="ChildFd.Terminal"/>). Bytes written to the master are the child's
/// keyboard; what it prints is read from the master.
/// </summary>
public sealed unsafe class PseudoTerminal : IDisposable
{
    private PseudoTerminal(SafeFileHandle master, string secondaryPath)
    {
        Master = master;
        SecondaryPath = secondaryPath;
    }

    public SafeFileHandle Master { get; }

    /// <summary>The /dev/pts/N path of the other end.</summary>
    public string SecondaryPath { get; }

    public static PseudoTerminal Open()
    {
        var fd = Interop.PosixOpenPt(Interop.O_RDWR | Interop.O_NOCTTY | Interop.O_CLOEXEC);
        if (fd < 0)
        {
            throw new IOException($"posix_openpt failed: {Marshal.GetLastPInvokeErrorMessage()}");
        }

        var handle = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            if (Interop.GrantPt(fd) != 0 || Interop.UnlockPt(fd) != 0)
            {
                throw new IOException($"grantpt/unlockpt failed: {Marshal.GetLastPInvokeErrorMessage()}");
            }

            var buffer = stackalloc byte[128];
            var rc = Interop.PtsNameR(fd, buffer, 128);
            if (rc != 0)
            {
                throw new IOException($"ptsname_r failed: {Marshal.GetPInvokeErrorMessage(rc)}");
            }

            return new PseudoTerminal(handle, Encoding.UTF8.GetString(MemoryMarshal.CreateReadOnlySpanFromNullTerminated(buffer)));
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Sets the window size; the kernel sends SIGWINCH to the terminal's foreground process group.</summary>
    public void Resize(ushort columns, ushort rows) => SetWindowSize(Master, columns, rows);

    public static void SetWindowSize(SafeHandle terminal, ushort columns, ushort rows)
    {
        ArgumentNullException.ThrowIfNull(terminal);
        var size = new Interop.WinSize { Rows = rows, Columns = columns };
        if (Interop.IoctlWinSize((int)terminal.DangerousGetHandle(), Interop.TIOCSWINSZ, &size) != 0)
        {
            throw new IOException($"ioctl(TIOCSWINSZ) failed: {Marshal.GetLastPInvokeErrorMessage()}");
        }
    }

    /// <summary>The window size of a terminal descriptor (e.g. 0 for the CLI's stdin), or null when it is not a terminal.</summary>
    public static (ushort Columns, ushort Rows)? GetWindowSize(int fd)
    {
        var size = default(Interop.WinSize);
        return Interop.IoctlWinSize(fd, Interop.TIOCGWINSZ, &size) == 0 ? (size.Columns, size.Rows) : null;
    }

    public void Dispose() => Master.Dispose();
}

/// <summary>The CLI's terminal in raw mode (no echo, no line editing, no signals from keys), restored on dispose.</summary>
public sealed unsafe class RawTerminal : IDisposable
{
    private readonly int _fd;
    private readonly byte[] _saved;
    private bool _restored;

    private RawTerminal(int fd, byte[] saved)
    {
        _fd = fd;
        _saved = saved;
    }

    public static bool IsTerminal(int fd) => Interop.IsATty(fd) == 1;

    /// <summary>Puts <paramref name="fd"/> into raw mode; null when it is not a terminal.</summary>
    public static RawTerminal? Enter(int fd)
    {
        if (!IsTerminal(fd))
        {
            return null;
        }

        var saved = new byte[Interop.TermiosSize];
        var raw = new byte[Interop.TermiosSize];
        fixed (byte* s = saved, r = raw)
        {
            if (Interop.TcGetAttr(fd, s) != 0)
            {
                throw new IOException($"tcgetattr failed: {Marshal.GetLastPInvokeErrorMessage()}");
            }

            saved.CopyTo(raw, 0);
            Interop.CfMakeRaw(r);
            if (Interop.TcSetAttr(fd, Interop.TCSANOW, r) != 0)
            {
                throw new IOException($"tcsetattr failed: {Marshal.GetLastPInvokeErrorMessage()}");
            }
        }

        return new RawTerminal(fd, saved);
    }

    public void Dispose()
    {
        if (_restored)
        {
            return;
        }

        _restored = true;
        fixed (byte* s = _saved)
        {
            _ = Interop.TcSetAttr(_fd, Interop.TCSANOW, s);
        }
    }
}
