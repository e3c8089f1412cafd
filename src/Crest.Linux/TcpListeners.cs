using System.Globalization;
using System.Runtime.InteropServices;

namespace Crest.Linux;

/// <summary>
/// Socket options of a TCP listener another process holds: each socket descriptor of the process tree (from
/// <c>/proc/PID/fd</c>) is copied into this process with <c>pidfd_getfd(2)</c>, and the one that listens
/// (SO_ACCEPTCONN) on TCP on the port asked for (getsockname) is changed there; the copy shares the socket, so its owner
/// sees the change. Sockets a listener accepts afterwards inherit its TCP options. (Not through /proc/net/tcp: reading
/// it walks the kernel's whole TCP hash, 7-9 ms per table on a 24 GiB node, and this runs while a container is frozen.)
/// </summary>
internal static class TcpListeners
{
    private const int SOL_SOCKET = 1;
    private const int SO_ACCEPTCONN = 30;
    private const int SO_PROTOCOL = 38;
    private const int IPPROTO_TCP = 6;
    private const int TCP_NODELAY = 1;
    private const ushort AF_INET = 2;
    private const ushort AF_INET6 = 10;

    /// <summary>
    /// Sets TCP_NODELAY on the socket listening on TCP <paramref name="port"/> that a process in the tree under
    /// <paramref name="root"/> (itself included) holds. Null when it is set, else why not.
    /// </summary>
    public static string? SetNoDelay(int root, int port)
    {
        string? refused = null;
        foreach (var pid in TreeOf(root))
        {
            var sockets = SocketDescriptors(pid);
            if (sockets.Count == 0)
            {
                continue;
            }

            var pidFd = Interop.PidFdOpen(pid);
            if (pidFd < 0)
            {
                refused ??= $"pidfd_open of process {pid} failed: {Marshal.GetLastPInvokeErrorMessage()}";
                continue;
            }

            try
            {
                foreach (var fd in sockets)
                {
                    var copy = Interop.PidFdGetFd(pidFd, fd);
                    if (copy < 0)
                    {
                        refused ??= $"pidfd_getfd of descriptor {fd} of process {pid} failed: {Marshal.GetLastPInvokeErrorMessage()} (it needs Linux 5.6 and ptrace access to the process: CAP_SYS_PTRACE where a seccomp profile asks for it)";
                        continue;
                    }

                    try
                    {
                        if (ListensOn(copy, port))
                        {
                            return SetNoDelay(copy);
                        }
                    }
                    finally
                    {
                        _ = Interop.Close(copy);
                    }
                }
            }
            finally
            {
                _ = Interop.Close(pidFd);
            }
        }

        return refused ?? $"no process in the tree of process {root} holds a TCP socket listening on port {port}";
    }

    /// <summary><paramref name="root"/> and its descendants, through each thread's /proc children list.</summary>
    private static List<int> TreeOf(int root)
    {
        var tree = new List<int> { root };
        for (var i = 0; i < tree.Count && tree.Count < 256; i++)
        {
            string[] tasks;
            try
            {
                tasks = Directory.GetDirectories($"/proc/{tree[i].ToString(CultureInfo.InvariantCulture)}/task");
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue; // Gone meanwhile.
            }

            foreach (var task in tasks)
            {
                try
                {
                    foreach (var child in File.ReadAllText(Path.Combine(task, "children")).Split(' ', StringSplitOptions.RemoveEmptyEntries))
                    {
                        if (int.TryParse(child, NumberStyles.None, CultureInfo.InvariantCulture, out var c) && !tree.Contains(c))
                        {
                            tree.Add(c);
                        }
                    }
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // That thread ended meanwhile; the others still count.
                }
            }
        }

        return tree;
    }

    /// <summary>The descriptors of <paramref name="pid"/> that are sockets ("socket:[INODE]" in /proc/PID/fd).</summary>
    private static List<int> SocketDescriptors(int pid)
    {
        var fds = new List<int>();
        string[] entries;
        try
        {
            entries = Directory.GetFileSystemEntries($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/fd");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return fds; // Gone meanwhile, or not ours to read.
        }

        foreach (var entry in entries)
        {
            try
            {
                if (new FileInfo(entry).LinkTarget is { } target && target.StartsWith("socket:", StringComparison.Ordinal)
                    && int.TryParse(Path.GetFileName(entry), NumberStyles.None, CultureInfo.InvariantCulture, out var fd))
                {
                    fds.Add(fd);
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Closed meanwhile.
            }
        }

        return fds;
    }

    /// <summary>Whether <paramref name="fd"/> is a TCP socket (IPv4 or IPv6) listening on <paramref name="port"/>.</summary>
    private static unsafe bool ListensOn(int fd, int port)
    {
        int value = 0;
        var length = (uint)sizeof(int);
        if (Interop.GetSockOpt(fd, SOL_SOCKET, SO_ACCEPTCONN, &value, &length) != 0 || value != 1)
        {
            return false;
        }

        length = (uint)sizeof(int);
        if (Interop.GetSockOpt(fd, SOL_SOCKET, SO_PROTOCOL, &value, &length) != 0 || value != IPPROTO_TCP)
        {
            return false;
        }

        // sockaddr_in and sockaddr_in6 both hold the family in their first two bytes and the port, big-endian, in the next two.
        var address = stackalloc byte[128];
        length = 128;
        if (Interop.GetSockName(fd, address, &length) != 0 || length < 4)
        {
            return false;
        }

        var family = *(ushort*)address;
        return family is AF_INET or AF_INET6 && (address[2] << 8 | address[3]) == port;
    }

    private static unsafe string? SetNoDelay(int fd)
    {
        var on = 1;
        return Interop.SetSockOpt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(int)) == 0
            ? null
            : $"setsockopt TCP_NODELAY failed: {Marshal.GetLastPInvokeErrorMessage()}";
    }
}
