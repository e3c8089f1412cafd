using System.Net.Sockets;
using Crest.Core;

namespace Crest.Daemon.Hosting;

/// <summary>
/// Makes the CRI socket path ready to bind: a live socket (another daemon answers) is refused, a stale
/// socket file left by a crash is removed, anything that is not a socket is left alone and refused.
/// </summary>
internal static class SocketGuard
{
    public static async Task<bool> PrepareAsync(string socketPath, CancellationToken ct)
    {
        var dir = Path.GetDirectoryName(socketPath)!;
        Directory.CreateDirectory(dir);
        var info = new FileInfo(socketPath);
        if (!info.Exists && info.LinkTarget is null)
        {
            return false;
        }

        if (info.LinkTarget is not null || (info.Attributes & FileAttributes.ReparsePoint) != 0)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"{socketPath} is a symbolic link; crestd will not follow it; remove it or choose another --socket");
        }

        if (!IsSocket(socketPath))
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"{socketPath} exists and is not a socket; crestd will not remove it; move it aside or choose another --socket");
        }

        var probe = await ProbeAsync(socketPath, ct).ConfigureAwait(false);
        if (probe is not null)
        {
            throw new CrestException(ErrorKind.AlreadyExists, probe);
        }

        File.Delete(socketPath);
        return true;
    }

    /// <summary>
    /// Null when the socket is dead (connection refused: nobody listens, safe to remove); otherwise why it
    /// must be left alone. Only ECONNREFUSED proves a socket stale: a busy or unreachable server is still a server.
    /// </summary>
    private static async Task<string?> ProbeAsync(string socketPath, CancellationToken ct)
    {
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(5));
        try
        {
            await probe.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), timeout.Token).ConfigureAwait(false);
            return $"another server is listening on {socketPath} (a connection succeeded); stop that crestd first or give this one another --socket and --state";
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
        {
            return null;
        }
        catch (SocketException e)
        {
            return $"{socketPath} is a socket that could not be probed ({e.SocketErrorCode}: {e.Message}); crestd will not remove it; check who owns it or choose another --socket";
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return $"{socketPath} accepts no connection within 5 s but does not refuse either: another server may be starting or hung; crestd will not remove it";
        }
    }

    private static bool IsSocket(string path)
    {
        // File.GetUnixFileMode does not expose the type; stat(2) through lstat's S_IFMT via the Mono-free route.
        return Linux.FileKinds.IsSocket(path);
    }
}
