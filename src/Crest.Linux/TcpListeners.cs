using System.Globalization;
using System.Runtime.InteropServices;

namespace Crest.Linux;

/// <summary>
/// Socket options of a TCP listener another process holds: its socket is found through /proc (the listening inode in
/// <c>/proc/PID/net/tcp{,6}</c>, then the descriptor among the process tree's <c>/proc/PID/fd</c>), duplicated into this
/// process with <c>pidfd_getfd(2)</c> and changed there; the duplicate shares the socket, so the owner sees the change.
/// Sockets a listener accepts afterwards inherit its TCP options.
/// </summary>
public static class TcpListeners
{
    private const int IPPROTO_TCP = 6;
    private const int TCP_NODELAY = 1;
    private const string ListenState = "0A";

    /// <summary>
    /// Sets TCP_NODELAY on the socket listening on <paramref name="port"/> that a process in the tree under
    /// <paramref name="root"/> (itself included) holds; false when no such socket is found or it cannot be reached.
    /// </summary>
    public static bool SetNoDelay(int root, int port)
    {
        var inodes = ListeningInodes(root, port);
        if (inodes.Count == 0)
        {
            return false;
        }

        foreach (var pid in TreeOf(root))
        {
            foreach (var fd in SocketDescriptors(pid, inodes))
            {
                if (SetNoDelayIn(pid, fd))
                {
                    return true;
                }
            }
        }

        return false;
    }

    /// <summary>The inodes of the sockets listening on <paramref name="port"/> in <paramref name="pid"/>'s network namespace.</summary>
    internal static HashSet<string> ListeningInodes(int pid, int port)
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
    /// The inodes of the rows of a /proc/net/tcp table in the listening state on <paramref name="port"/>: "sl local_address
    /// rem_address st tx:rx tr:when retrnsmt uid timeout inode ...", the local address as hex "ADDR:PORT".
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
            try
            {
                foreach (var task in Directory.EnumerateDirectories($"/proc/{tree[i].ToString(CultureInfo.InvariantCulture)}/task"))
                {
                    foreach (var child in File.ReadAllText(Path.Combine(task, "children")).Split(' ', StringSplitOptions.RemoveEmptyEntries))
                    {
                        if (int.TryParse(child, NumberStyles.None, CultureInfo.InvariantCulture, out var c) && !tree.Contains(c))
                        {
                            tree.Add(c);
                        }
                    }
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Gone meanwhile.
            }
        }

        return tree;
    }

    private static List<int> SocketDescriptors(int pid, HashSet<string> inodes)
    {
        var fds = new List<int>();
        try
        {
            foreach (var entry in Directory.EnumerateFileSystemEntries($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/fd"))
            {
                var target = new FileInfo(entry).LinkTarget;
                if (target is not null && target.StartsWith("socket:[", StringComparison.Ordinal) && inodes.Contains(target[8..^1])
                    && int.TryParse(Path.GetFileName(entry), NumberStyles.None, CultureInfo.InvariantCulture, out var fd))
                {
                    fds.Add(fd);
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Gone meanwhile, or not ours to read.
        }

        return fds;
    }

    private static unsafe bool SetNoDelayIn(int pid, int fd)
    {
        var pidFd = Interop.PidFdOpen(pid);
        if (pidFd < 0)
        {
            return false;
        }

        try
        {
            var copy = Interop.PidFdGetFd(pidFd, fd);
            if (copy < 0)
            {
                return false;
            }

            try
            {
                var on = 1;
                return Interop.SetSockOpt(copy, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(int)) == 0;
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

internal static unsafe partial class Interop
{
    private const long SYS_pidfd_open = 434;
    private const long SYS_pidfd_getfd = 438;

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall3(long number, long a, long b, long c);

    internal static int PidFdOpen(int pid) => (int)Syscall3(SYS_pidfd_open, pid, 0, 0);

    internal static int PidFdGetFd(int pidFd, int targetFd) => (int)Syscall3(SYS_pidfd_getfd, pidFd, targetFd, 0);

    [LibraryImport("libc", EntryPoint = "setsockopt", SetLastError = true)]
    internal static partial int SetSockOpt(int fd, int level, int name, void* value, uint length);
}
