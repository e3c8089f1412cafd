using System.Runtime.InteropServices;
using Crest.Core;

namespace Crest.Linux;

/// <summary>The syscalls the runtime layer makes, behind a seam so mount and namespace logic is testable without root.</summary>
public interface ILinux
{
    /// <summary>mount(2); errors name source, target and type.</summary>
    void Mount(string? source, string target, string? fsType, MountOptions flags, string? data);

    /// <summary>Detaches a mount; a target that is not mounted (EINVAL) or gone (ENOENT) is not an error.</summary>
    void Unmount(string target);

    /// <summary>Creates a network namespace held by a bind mount on <paramref name="path"/> (an nsfs file, as ip netns does).</summary>
    void CreateNetworkNamespace(string path);

    /// <summary>Unmounts and removes a network namespace file; idempotent.</summary>
    void RemoveNetworkNamespace(string path);

    /// <summary>Sends a signal; false when the process does not exist.</summary>
    bool Kill(int pid, int signal);

    /// <summary>True when a process with this pid exists (signal 0).</summary>
    bool IsAlive(int pid);

    /// <summary>Mount points at or below <paramref name="prefix"/>, from /proc/self/mountinfo.</summary>
    IReadOnlyList<string> MountsUnder(string prefix);

    /// <summary>The mount that holds <paramref name="path"/> (symlinks resolved) and its propagation, from /proc/self/mountinfo.</summary>
    (string MountPoint, MountPropagation Propagation) PropagationOf(string path);

    /// <summary>
    /// SIGKILLs a process and every descendant it has (found by parent pid in /proc, in passes until none is left), so
    /// a command that forked does not leave its children running.
    /// </summary>
    void KillProcessTree(int pid);

    /// <summary>The node's host name (gethostname(2), the whole name, domain included when it has one).</summary>
    string HostName();

    /// <summary>True when <paramref name="path"/> lies on a tmpfs (statfs(2)); false when it does not or cannot be read.</summary>
    bool IsTmpfs(string path);

    /// <summary>
    /// The capabilities this process holds, as a mask (bit N is capability N): its effective set within its
    /// bounding set. A container can be granted no more than this, whatever it asks for.
    /// </summary>
    ulong HeldCapabilities();

    /// <summary>Binds <paramref name="source"/> onto <paramref name="target"/> id-mapped through the user namespace file <paramref name="userNamespaceFile"/>.</summary>
    void BindIdMapped(string source, string target, string userNamespaceFile);

    /// <summary>Changes the owner of a file or directory (not following a last symlink).</summary>
    void Chown(string path, uint uid, uint gid);

    /// <summary>CPU and memory counters of the cgroup at <paramref name="cgroupsPath"/> (as given to runc with cgroupfs); null if it is gone.</summary>
    CgroupUsage? CgroupUsage(string cgroupsPath);

    /// <summary>The processes in the cgroup at <paramref name="cgroupsPath"/> (as given to runc with cgroupfs); empty if it is gone.</summary>
    IReadOnlyList<int> CgroupProcesses(string cgroupsPath);

    /// <summary>
    /// The tasks of the cgroup at <paramref name="cgroupsPath"/> that wait in vfork(2) for a child to exec or exit
    /// (<see cref="VforkWaits"/>): CRIU cannot seize them. Empty when there are none or the cgroup is gone.
    /// </summary>
    IReadOnlyList<int> TasksInVfork(string cgroupsPath);

    /// <summary>The node's memory available for new allocations without swapping (/proc/meminfo MemAvailable), in bytes.</summary>
    long MemoryAvailableBytes();

    /// <summary>The page cache's dirty bytes and the kernel's background writeback threshold (/proc/meminfo, vm.dirty_background_*).</summary>
    DirtyPageCache DirtyPageCache();

    /// <summary>Free bytes of the filesystem holding <paramref name="path"/> for an unprivileged writer (statvfs f_bavail).</summary>
    long FreeBytes(string path);

    /// <summary>The received and sent byte counters of interface <paramref name="name"/> as process <paramref name="pid"/> sees it; null if it has none.</summary>
    (ulong Rx, ulong Tx)? InterfaceCounters(int pid, string name);

    /// <summary>A TCP connection to 127.0.0.1:<paramref name="port"/> made inside the network namespace file <paramref name="netnsPath"/>.</summary>
    Task<System.Net.Sockets.Socket> ConnectLoopbackAsync(string netnsPath, int port, TimeSpan timeout);

    /// <summary>
    /// Turns Nagle's algorithm off (TCP_NODELAY) on the socket listening on <paramref name="port"/> that a process in the
    /// tree under <paramref name="root"/> holds, so the connections it accepts from then on send each write at once
    /// (through /proc and a pidfd_getfd copy of its descriptor). Null when done, else why not: no such listener, or
    /// the kernel refused the copy.
    /// </summary>
    string? SetListenerNoDelay(int root, int port);

    /// <summary>
    /// Saves the System V shared memory of the IPC namespace file <paramref name="ipcNamespaceFile"/> to a new 0600
    /// <paramref name="outputFile"/> (which must not exist; it is removed again on failure). See <see cref="SysVSharedMemory.Save"/>.
    /// </summary>
    SysVShmSummary SaveSysVSharedMemory(string ipcNamespaceFile, string outputFile, CancellationToken ct);

    /// <summary>Recreates the segments saved in <paramref name="inputFile"/> in the IPC namespace file; see <see cref="SysVSharedMemory.Restore"/>.</summary>
    SysVShmSummary RestoreSysVSharedMemory(string ipcNamespaceFile, string inputFile, long maxTotalBytes, CancellationToken ct);
}

[Flags]
public enum MountOptions : ulong
{
    None = 0,
    ReadOnly = Interop.MS_RDONLY,
    NoSuid = 0x2,
    NoDev = 0x4,
    NoExec = 0x8,
    /// <summary>MS_NOSYMFOLLOW (Linux 5.10): no symlink on the mount is followed in any path lookup.</summary>
    NoSymFollow = 0x100,
    Bind = Interop.MS_BIND,
    Recursive = Interop.MS_REC,
    Private = Interop.MS_PRIVATE,
    Slave = 0x80000,
    Shared = 0x100000,
}

/// <summary>The real syscalls.</summary>
public sealed class LinuxSyscalls : ILinux
{
    public void Mount(string? source, string target, string? fsType, MountOptions flags, string? data)
    {
        if (Interop.Mount(source, target, fsType, (ulong)flags, data) != 0)
        {
            throw new CrestException(ErrorKind.Internal, $"mount of {source ?? fsType} on {target} ({fsType ?? "bind"}) failed: {Marshal.GetLastPInvokeErrorMessage()}");
        }
    }

    public void Unmount(string target)
    {
        if (Interop.Umount2(target, Interop.MNT_DETACH) != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            if (errno is not (Interop.EINVAL or Interop.ENOENT))
            {
                throw new CrestException(ErrorKind.Internal, $"unmount of {target} failed: {Marshal.GetPInvokeErrorMessage(errno)}");
            }
        }
    }

    public void CreateNetworkNamespace(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using (File.Create(path))
        {
        }

        // unshare(CLONE_NEWNET) moves only the calling thread; a dedicated thread does it and then ends,
        // so no pooled thread is ever left in the wrong namespace.
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                if (Interop.Unshare(Interop.CLONE_NEWNET) != 0)
                {
                    throw new CrestException(ErrorKind.Internal, $"unshare(CLONE_NEWNET) failed: {Marshal.GetLastPInvokeErrorMessage()}");
                }

                Mount($"/proc/self/task/{Interop.GetTid()}/ns/net", path, null, MountOptions.Bind, null);
            }
            catch (Exception e)
            {
                failure = e;
            }
        })
        { IsBackground = true, Name = "crest-netns" };
        thread.Start();
        thread.Join();
        if (failure is not null)
        {
            File.Delete(path);
            throw failure is CrestException ? failure : new CrestException(ErrorKind.Internal, $"creating network namespace {path} failed: {failure.Message}", failure);
        }
    }

    public void RemoveNetworkNamespace(string path)
    {
        Unmount(path);
        File.Delete(path);
    }

    public bool Kill(int pid, int signal) => pid > 0 && Interop.Kill(pid, signal) == 0;

    public string HostName() => System.Net.Dns.GetHostName();

    public unsafe bool IsTmpfs(string path)
    {
        var buffer = stackalloc byte[256];
        return Interop.StatFs(path, buffer) == 0 && *(long*)buffer == Interop.TMPFS_MAGIC;
    }

    public void KillProcessTree(int pid)
    {
        if (pid <= 0)
        {
            return;
        }

        // Stop the root first so it forks no more, then kill what hangs below it; a few passes catch late forks.
        _ = Interop.Kill(pid, 19 /* SIGSTOP */);
        for (var pass = 0; pass < 5; pass++)
        {
            var tree = Descendants(pid);
            foreach (var p in tree)
            {
                _ = Interop.Kill(p, 19);
            }

            foreach (var p in tree)
            {
                _ = Interop.Kill(p, 9);
            }

            if (tree.Count == 0)
            {
                break;
            }
        }

        _ = Interop.Kill(pid, 9);
    }

    /// <summary>Every process below <paramref name="root"/> in the parent-pid tree, read from /proc/PID/stat.</summary>
    private static List<int> Descendants(int root)
    {
        var parents = new Dictionary<int, int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var p))
            {
                continue;
            }

            try
            {
                // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so read after the last ')'.
                var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                if (fields.Length > 1 && int.TryParse(fields[1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var ppid))
                {
                    parents[p] = ppid;
                }
            }
            catch (IOException)
            {
                // Gone meanwhile.
            }
        }

        var result = new List<int>();
        var frontier = new Queue<int>([root]);
        while (frontier.Count > 0)
        {
            var parent = frontier.Dequeue();
            foreach (var (child, ppid) in parents)
            {
                if (ppid == parent && !result.Contains(child))
                {
                    result.Add(child);
                    frontier.Enqueue(child);
                }
            }
        }

        return result;
    }

    public void BindIdMapped(string source, string target, string userNamespaceFile) => IdMappedMounts.Bind(source, target, userNamespaceFile);

    public void Chown(string path, uint uid, uint gid)
    {
        if (Interop.FchownAt(Interop.AT_FDCWD, path, uid, gid, Interop.AT_SYMLINK_NOFOLLOW) != 0)
        {
            throw new CrestException(ErrorKind.Internal, $"chown of {path} to {uid}:{gid} failed: {Marshal.GetLastPInvokeErrorMessage()}");
        }
    }

    public ulong HeldCapabilities() => ParseHeldCapabilities(File.ReadAllText("/proc/self/status"));

    public CgroupUsage? CgroupUsage(string cgroupsPath) => CgroupStats.Read(cgroupsPath);

    public long MemoryAvailableBytes() => MemoryInfo.AvailableBytes(File.ReadAllText("/proc/meminfo"));

    public long FreeBytes(string path) => DiskBudget.FreeBytesOf(path);

    public DirtyPageCache DirtyPageCache() => MemoryInfo.DirtyPageCache(File.ReadAllText("/proc/meminfo"),
        long.Parse(File.ReadAllText("/proc/sys/vm/dirty_background_bytes").Trim(), System.Globalization.CultureInfo.InvariantCulture),
        int.Parse(File.ReadAllText("/proc/sys/vm/dirty_background_ratio").Trim(), System.Globalization.CultureInfo.InvariantCulture));

    public IReadOnlyList<int> CgroupProcesses(string cgroupsPath) => CgroupStats.Processes(cgroupsPath);

    public IReadOnlyList<int> TasksInVfork(string cgroupsPath) => VforkWaits.Of(CgroupStats.Processes(cgroupsPath));

    public (ulong Rx, ulong Tx)? InterfaceCounters(int pid, string name)
    {
        try
        {
            return ParseInterfaceCounters(File.ReadLines($"/proc/{pid}/net/dev"), name);
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>An interface's byte counters from the lines of /proc/PID/net/dev ("eth0: rx_bytes ... tx_bytes ...").</summary>
    public static (ulong Rx, ulong Tx)? ParseInterfaceCounters(IEnumerable<string> netDev, string name)
    {
        ArgumentNullException.ThrowIfNull(netDev);
        foreach (var line in netDev)
        {
            var colon = line.IndexOf(':', StringComparison.Ordinal);
            if (colon > 0 && line[..colon].Trim() == name)
            {
                var f = line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return (ulong.Parse(f[0], System.Globalization.CultureInfo.InvariantCulture), ulong.Parse(f[8], System.Globalization.CultureInfo.InvariantCulture));
            }
        }

        return null;
    }

    public Task<System.Net.Sockets.Socket> ConnectLoopbackAsync(string netnsPath, int port, TimeSpan timeout) =>
        NetworkNamespaces.ConnectLoopbackAsync(netnsPath, port, timeout);

    public string? SetListenerNoDelay(int root, int port) => TcpListeners.SetNoDelay(root, port);

    public SysVShmSummary SaveSysVSharedMemory(string ipcNamespaceFile, string outputFile, CancellationToken ct)
    {
        var output = new FileStream(outputFile, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        });
        try
        {
            using (output)
            {
                return SysVSharedMemory.Save(ipcNamespaceFile, output, ct);
            }
        }
        catch
        {
            File.Delete(outputFile);
            throw;
        }
    }

    public SysVShmSummary RestoreSysVSharedMemory(string ipcNamespaceFile, string inputFile, long maxTotalBytes, CancellationToken ct)
    {
        using var input = new FileStream(inputFile, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        return SysVSharedMemory.Restore(ipcNamespaceFile, input, maxTotalBytes, ct);
    }

    /// <summary>CapEff within CapBnd from the text of /proc/PID/status.</summary>
    public static ulong ParseHeldCapabilities(string status)
    {
        ArgumentNullException.ThrowIfNull(status);
        ulong Field(string name)
        {
            foreach (var line in status.Split('\n'))
            {
                if (line.StartsWith(name + ":", StringComparison.Ordinal))
                {
                    return ulong.Parse(line.AsSpan(name.Length + 1).Trim(), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture);
                }
            }

            throw new CrestException(ErrorKind.Internal, $"/proc/self/status has no {name} line; cannot tell which capabilities crestd holds");
        }

        return Field("CapEff") & Field("CapBnd");
    }

    /// <summary>True for a process that exists and is not a zombie (a dead child nobody reaped yet is not alive).</summary>
    public bool IsAlive(int pid)
    {
        if (pid <= 0 || (Interop.Kill(pid, 0) != 0 && Marshal.GetLastPInvokeError() != 1 /* EPERM: exists */))
        {
            return false;
        }

        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[(stat.LastIndexOf(')') + 2)] is not ('Z' or 'X');
        }
        catch (IOException)
        {
            return false;
        }
    }

    public (string MountPoint, MountPropagation Propagation) PropagationOf(string path)
    {
        return MountInfo.PropagationOf(Resolve(path), File.ReadLines("/proc/self/mountinfo"));
    }

    /// <summary><paramref name="path"/> with every symlink along it followed (a missing part is kept as written).</summary>
    private static string Resolve(string path)
    {
        var current = "/";
        foreach (var part in Path.GetFullPath(path).Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            var next = Path.Combine(current, part);
            try
            {
                current = new FileInfo(next).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? next;
            }
            catch (IOException)
            {
                current = next;
            }
        }

        return current;
    }

    public IReadOnlyList<string> MountsUnder(string prefix)
    {
        var result = new List<string>();
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            var fields = line.Split(' ');
            if (fields.Length > 4)
            {
                var mountPoint = fields[4].Replace("\\040", " ", StringComparison.Ordinal);
                if (mountPoint == prefix || mountPoint.StartsWith(prefix.TrimEnd('/') + "/", StringComparison.Ordinal))
                {
                    result.Add(mountPoint);
                }
            }
        }

        return result;
    }
}
