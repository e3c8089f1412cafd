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

        if (await IsLiveAsync(socketPath, ct).ConfigureAwait(false))
        {
            throw new CrestException(ErrorKind.AlreadyExists,
                $"another server is listening on {socketPath} (a connection succeeded); stop that crestd first or give this one another --socket and --state");
        }

        File.Delete(socketPath);
        return true;
    }

    public static async Task<bool> IsLiveAsync(string socketPath, CancellationToken ct)
    {
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await probe.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct).ConfigureAwait(false);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    private static bool IsSocket(string path)
    {
        // File.GetUnixFileMode does not expose the type; stat(2) through lstat's S_IFMT via the Mono-free route.
        return Linux.FileKinds.IsSocket(path);
    }
}
