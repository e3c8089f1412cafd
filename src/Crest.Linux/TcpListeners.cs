using System.Globalization;
using System.Runtime.InteropServices;

namespace Crest.Linux;

/// <summary>
/// Socket options of a TCP listener another process holds: its socket is found through /proc (the listening inode in
/// <c>/proc/PID/net/tcp{,6}</c>, then the descriptor among the process tree's <c>/proc/PID/fd</c>), duplicated into this
/// process with <c>pidfd_getfd(2)</c> and changed there; the duplicate shares the socket, so the owner sees the change.
/// Sockets a listener accepts afterwards inherit its TCP options.
/// </summary>
internal static class TcpListeners
{
    private const int IPPROTO_TCP = 6;
    private const int TCP_NODELAY = 1;
    private const string ListenState = "0A";

    /// <summary>
    /// Sets TCP_NODELAY on the socket listening on <paramref name="port"/> that a process in the tree under
    /// <paramref name="root"/> (itself included) holds. Null when it is set, else why not.
    /// </summary>
    public static string? SetNoDelay(int root, int port)
    {
        var inodes = ListeningInodes(root, port);
        if (inodes.Count == 0)
        {
            return $"nothing listens on TCP port {port} in the network namespace of process {root}";
        }

        string? why = null;
        foreach (var pid in TreeOf(root))
        {
            foreach (var (fd, inode) in SocketDescriptors(pid, inodes))
            {
                why = SetNoDelayIn(pid, fd, inode);
                if (why is null)
                {
                    return null;
                }
            }
        }

        return why ?? $"no process in the tree of process {root} holds the socket listening on TCP port {port}";
    }

    /// <summary>The inodes of the sockets listening on <paramref name="port"/> in <paramref name="pid"/>'s network namespace.</summary>
    private static HashSet<string> ListeningInodes(int pid, int port)
    {
        var inodes = new HashSet<string>(StringComparer.Ordinal);
        foreach (var table in new[] { "tcp", "tcp6" })
        {
            try
            {
                inodes.UnionWith(ParseListeningInodes(File.ReadLines($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/net/{table}"), port));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // The process is gone, or the kernel has no IPv6.
            }
        }

        return inodes;
    }

    /// <summary>
    /// The inodes of the rows of a /proc/net/tcp or tcp6 table in the listening state on <paramref name="port"/>: "sl
    /// local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...", the local address as hex "ADDR:PORT".
    /// </summary>
    public static IReadOnlyList<string> ParseListeningInodes(IEnumerable<string> table, int port)
    {
        ArgumentNullException.ThrowIfNull(table);
        var found = new List<string>();
        foreach (var line in table.Skip(1))
        {
            var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length < 10 || fields[3] != ListenState)
            {
                continue;
            }

            var colon = fields[1].LastIndexOf(':');
            if (colon > 0 && int.TryParse(fields[1].AsSpan(colon + 1), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var p) && p == port
                && fields[9] != "0")
            {
                found.Add(fields[9]);
            }
        }

        return found;
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

    /// <summary>The descriptors of <paramref name="pid"/> that are one of the sockets <paramref name="inodes"/>, with the inode each is.</summary>
    private static List<(int Fd, string Inode)> SocketDescriptors(int pid, HashSet<string> inodes)
    {
        var fds = new List<(int, string)>();
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
            if (SocketInode(entry) is { } inode && inodes.Contains(inode)
                && int.TryParse(Path.GetFileName(entry), NumberStyles.None, CultureInfo.InvariantCulture, out var fd))
            {
                fds.Add((fd, inode));
            }
        }

        return fds;
    }

    /// <summary>The inode of the socket a /proc fd link names ("socket:[INODE]"), or null (not a socket, or closed meanwhile).</summary>
    private static string? SocketInode(string fdLink)
    {
        try
        {
            return new FileInfo(fdLink).LinkTarget is { } target && target.StartsWith("socket:[", StringComparison.Ordinal) && target.EndsWith(']')
                ? target[8..^1]
                : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static unsafe string? SetNoDelayIn(int pid, int fd, string inode)
    {
        var pidFd = Interop.PidFdOpen(pid);
        if (pidFd < 0)
        {
            return $"pidfd_open of process {pid} failed: {Marshal.GetLastPInvokeErrorMessage()}";
        }

        try
        {
            var copy = Interop.PidFdGetFd(pidFd, fd);
            if (copy < 0)
            {
                return $"pidfd_getfd of descriptor {fd} of process {pid} failed: {Marshal.GetLastPInvokeErrorMessage()} (it needs Linux 5.6 and ptrace access to the process: CAP_SYS_PTRACE where a seccomp profile asks for it)";
            }

            try
            {
                // The pid or the descriptor number may have been reused since /proc was read: change only the socket found.
                if (SocketInode($"/proc/self/fd/{copy.ToString(CultureInfo.InvariantCulture)}") != inode)
                {
                    return $"descriptor {fd} of process {pid} is no longer the listening socket";
                }

                var on = 1;
                return Interop.SetSockOpt(copy, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(int)) == 0
                    ? null
                    : $"setsockopt TCP_NODELAY failed: {Marshal.GetLastPInvokeErrorMessage()}";
            }
            finally
            {
                _ = Interop.Close(copy);
            }
        }
        finally
        {
            _ = Interop.Close(pidFd);
        }
    }
}
