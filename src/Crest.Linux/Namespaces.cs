using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Crest.Core;

namespace Crest.Linux;

/// <summary>Sockets made inside another network namespace (a pod's), for port-forward.</summary>
public static class NetworkNamespaces
{
    /// <summary>
    /// Connects to 127.0.0.1:<paramref name="port"/> as seen inside the network namespace at <paramref name="netnsPath"/>.
    /// A socket belongs to the namespace of the thread that creates it, so a dedicated thread enters the namespace,
    /// creates and connects the socket, and then ends: no pooled thread is ever left in the pod's namespace.
    /// </summary>
    public static Task<Socket> ConnectLoopbackAsync(string netnsPath, int port, TimeSpan timeout)
    {
        var done = new TaskCompletionSource<Socket>(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            Socket? socket = null;
            try
            {
                var fd = Interop.Open(netnsPath, Interop.O_RDONLY | Interop.O_CLOEXEC, 0);
                if (fd < 0)
                {
                    throw new CrestException(ErrorKind.FailedPrecondition, $"network namespace {netnsPath} cannot be opened: {Marshal.GetLastPInvokeErrorMessage()}");
                }

                try
                {
                    if (Interop.SetNs(fd, Interop.CLONE_NEWNET) != 0)
                    {
                        throw new CrestException(ErrorKind.Internal, $"setns({netnsPath}) failed: {Marshal.GetLastPInvokeErrorMessage()}");
                    }
                }
                finally
                {
                    _ = Interop.Close(fd);
                }

                socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                var connect = socket.BeginConnect(new IPEndPoint(IPAddress.Loopback, port), null, null);
                if (!connect.AsyncWaitHandle.WaitOne(timeout))
                {
                    throw new CrestException(ErrorKind.DeadlineExceeded, $"connecting to port {port} in {netnsPath} took longer than {timeout.TotalSeconds:0} s");
                }

                socket.EndConnect(connect);
                done.SetResult(socket);
            }
            catch (SocketException e)
            {
                socket?.Dispose();
                done.SetException(new CrestException(ErrorKind.Unavailable, $"nothing accepts connections on 127.0.0.1:{port} inside the pod ({e.SocketErrorCode})", e));
            }
            catch (Exception e)
            {
                socket?.Dispose();
                done.SetException(e);
            }
        })
        { IsBackground = true, Name = "crest-portforward" };
        thread.Start();
        return done.Task;
    }
}

/// <summary>Unix sockets reached through a directory descriptor, so a long state path never exceeds sun_path's 108 bytes.</summary>
public static class UnixSockets
{
    public static async Task<Socket> ConnectAsync(string directory, string name, SocketType type, CancellationToken ct)
    {
        var fd = Interop.Open(directory, Interop.O_PATH | Interop.O_DIRECTORY | Interop.O_CLOEXEC, 0);
        if (fd < 0)
        {
            throw new IOException($"{directory} cannot be opened: {Marshal.GetLastPInvokeErrorMessage()}");
        }

        var socket = new Socket(AddressFamily.Unix, type, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint($"/proc/self/fd/{fd}/{name}"), ct).ConfigureAwait(false);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        finally
        {
            _ = Interop.Close(fd);
        }
    }
}
