using System.Net.Sockets;
using System.Text;

namespace Crest.Daemon;

/// <summary>
/// sd_notify(3) without libsystemd: one datagram to the socket systemd names in NOTIFY_SOCKET, so a unit with
/// Type=notify counts crestd as started only once it serves CRI, and sees it stopping.
/// </summary>
public sealed class SystemdNotify
{
    private readonly string? _socket;

    private SystemdNotify(string? socket) => _socket = socket;

    /// <summary>True when systemd (or a test standing in for it) asked for notifications.</summary>
    public bool Enabled => _socket is not null;

    /// <summary>
    /// Reads NOTIFY_SOCKET and takes it out of crestd's environment: conmon and runc inherit that environment, and runc
    /// reads NOTIFY_SOCKET as a request to relay the container's own notifications, holding every start until the
    /// container sends READY=1.
    /// </summary>
    public static SystemdNotify FromEnvironment()
    {
        var socket = Environment.GetEnvironmentVariable("NOTIFY_SOCKET");
        Environment.SetEnvironmentVariable("NOTIFY_SOCKET", null);
        return new SystemdNotify(string.IsNullOrEmpty(socket) ? null : socket);
    }

    /// <summary>Sends newline-separated assignments ("READY=1", "STOPPING=1", "STATUS=..."); false, with the reason, if it could not.</summary>
    public bool TrySend(string state, out string? problem)
    {
        problem = null;
        if (_socket is null)
        {
            return true;
        }

        // "@name" is a socket in the abstract namespace, addressed with a leading NUL.
        var address = _socket[0] == '@' ? "\0" + _socket[1..] : _socket;
        try
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            socket.Connect(new UnixDomainSocketEndPoint(address));
            socket.Send(Encoding.UTF8.GetBytes(state));
            return true;
        }
        catch (SocketException e)
        {
            problem = $"notifying systemd through {_socket} failed: {e.Message}";
            return false;
        }
    }
}
