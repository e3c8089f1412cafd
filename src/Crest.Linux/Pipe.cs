using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Crest.Linux;

/// <summary>A close-on-exec pipe; one end is handed to a child with <see cref="ChildFd"/>.</summary>
public sealed unsafe class Pipe : IDisposable
{
    public Pipe()
    {
        var fds = stackalloc int[2];
        if (Interop.Pipe2(fds, Interop.O_CLOEXEC) != 0)
        {
            throw new IOException($"pipe2 failed: {Marshal.GetLastPInvokeErrorMessage()}");
        }

        ReadFd = fds[0];
        WriteFd = fds[1];
    }

    public int ReadFd { get; private set; }

    public int WriteFd { get; private set; }

    public void CloseWrite()
    {
        if (WriteFd >= 0)
        {
            _ = Interop.Close(WriteFd);
            WriteFd = -1;
        }
    }

    /// <summary>The read end as a stream; the stream owns it from now on.</summary>
    public FileStream OpenReader()
    {
        var stream = new FileStream(new SafeFileHandle(ReadFd, ownsHandle: true), FileAccess.Read, 1);
        ReadFd = -1;
        return stream;
    }

    /// <summary>The write end as a stream; the stream owns it from now on.</summary>
    public FileStream OpenWriter()
    {
        var stream = new FileStream(new SafeFileHandle(WriteFd, ownsHandle: true), FileAccess.Write, 1);
        WriteFd = -1;
        return stream;
    }

    public void Dispose()
    {
        CloseWrite();
        if (ReadFd >= 0)
        {
            _ = Interop.Close(ReadFd);
            ReadFd = -1;
        }
    }
}
