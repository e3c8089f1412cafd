using System.Runtime.InteropServices;

namespace Crest.Linux;

/// <summary>
/// A connected AF_UNIX SOCK_SEQPACKET pair: one message per send, as CRIU's RPC (criu swrk) expects.
/// Both ends are close-on-exec; hand one to a child with <see cref="ChildFd"/>.
/// </summary>
public sealed unsafe class SeqPacketPair : IDisposable
{
    private int _local;
    private int _remote;

    public SeqPacketPair()
    {
        var fds = stackalloc int[2];
        if (Interop.SocketPair(Interop.AF_UNIX, Interop.SOCK_SEQPACKET | Interop.SOCK_CLOEXEC, 0, fds) != 0)
        {
            throw new IOException($"socketpair(AF_UNIX, SOCK_SEQPACKET) failed: {Marshal.GetLastPInvokeErrorMessage()}");
        }

        _local = fds[0];
        _remote = fds[1];
    }

    /// <summary>The end to give to the child.</summary>
    public int RemoteFd => _remote;

    /// <summary>Closes our copy of the child's end once the child has it, so EOF is seen when the child exits.</summary>
    public void CloseRemote()
    {
        if (_remote >= 0)
        {
            _ = Interop.Close(_remote);
            _remote = -1;
        }
    }

    public void Send(ReadOnlySpan<byte> message)
    {
        fixed (byte* p = message)
        {
            if (Interop.Send(_local, p, message.Length, 0) != message.Length)
            {
                throw new IOException($"send on the seqpacket socket failed: {Marshal.GetLastPInvokeErrorMessage()}");
            }
        }
    }

    /// <summary>Receives one message, waiting at most until <paramref name="deadline"/>; null on EOF.</summary>
    public byte[]? Receive(int maxSize, DateTimeOffset deadline, TimeProvider time)
    {
        ArgumentNullException.ThrowIfNull(time);
        var buffer = new byte[maxSize];
        while (true)
        {
            var remaining = deadline - time.GetUtcNow();
            if (remaining <= TimeSpan.Zero)
            {
                throw new TimeoutException("no answer on the seqpacket socket before the deadline");
            }

            var pfd = new Interop.PollFd { Fd = _local, Events = Interop.POLLIN };
            var ready = Interop.Poll(&pfd, 1, (int)Math.Min(remaining.TotalMilliseconds, 200));
            if (ready < 0)
            {
                if (Marshal.GetLastPInvokeError() == Interop.EINTR)
                {
                    continue;
                }

                throw new IOException($"poll failed: {Marshal.GetLastPInvokeErrorMessage()}");
            }

            if (ready == 0)
            {
                continue;
            }

            fixed (byte* p = buffer)
            {
                var n = Interop.Recv(_local, p, buffer.Length, 0);
                if (n < 0)
                {
                    throw new IOException($"recv on the seqpacket socket failed: {Marshal.GetLastPInvokeErrorMessage()}");
                }

                return n == 0 ? null : buffer.AsSpan(0, (int)n).ToArray();
            }
        }
    }

    public void Dispose()
    {
        CloseRemote();
        if (_local >= 0)
        {
            _ = Interop.Close(_local);
            _local = -1;
        }
    }
}
