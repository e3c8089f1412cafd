using System.Net.Sockets;
using Crest.Core;
using Crest.Linux;

namespace Crest.UnitTests.Fakes;

/// <summary>
/// <see cref="ILinux"/> without the kernel: every call is recorded in order, mounts and network namespaces are kept in
/// a table (a namespace file is created on disk, as the real one is, so code that checks for it behaves the same), and
/// processes are alive only when a test says so (this test process always is).
/// </summary>
public sealed class RecordingLinux : ILinux
{
    private readonly Lock _gate = new();
    private readonly List<string> _calls = [];
    private readonly HashSet<string> _mounts = new(StringComparer.Ordinal);

    /// <summary>Every call, as "Verb target", in order.</summary>
    public IReadOnlyList<string> Calls
    {
        get
        {
            lock (_gate)
            {
                return [.. _calls];
            }
        }
    }

    /// <summary>What is mounted now.</summary>
    public IReadOnlyCollection<string> Mounts
    {
        get
        {
            lock (_gate)
            {
                return [.. _mounts];
            }
        }
    }

    /// <summary>Pids that exist besides this process.</summary>
    public HashSet<int> Alive { get; } = [];

    /// <summary>What a mount's propagation is, by mount point; paths under none lie on "/" with this default.</summary>
    public MountPropagation RootPropagation { get; set; } = MountPropagation.Private;

    /// <summary>Cgroup counters by cgroups path; a path not here is a cgroup that is gone.</summary>
    public Dictionary<string, CgroupUsage> Cgroups { get; } = new(StringComparer.Ordinal);

    /// <summary>Interface counters by (pid, interface).</summary>
    public Dictionary<(int Pid, string Name), (ulong Rx, ulong Tx)> Interfaces { get; } = [];

    /// <summary>When set, the next <see cref="Mount"/> whose target ends with this text fails as mount(2) would.</summary>
    public string? FailMountOf { get; set; }

    public void Mount(string? source, string target, string? fsType, MountOptions flags, string? data)
    {
        Record($"Mount {target}");
        if (FailMountOf is { } failing && target.EndsWith(failing, StringComparison.Ordinal))
        {
            throw new CrestException(ErrorKind.Internal, $"mount of {source ?? fsType} on {target} ({fsType ?? "bind"}) failed: Operation not permitted");
        }

        lock (_gate)
        {
            _mounts.Add(target);
            MountedWith[target] = (fsType, data);
            MountedFlags[target] = flags;
        }
    }

    /// <summary>The flags of each mount made, by target.</summary>
    public Dictionary<string, MountOptions> MountedFlags { get; } = new(StringComparer.Ordinal);

    /// <summary>The filesystem type and data of each mount made, by target.</summary>
    public Dictionary<string, (string? FsType, string? Data)> MountedWith { get; } = new(StringComparer.Ordinal);

    public void Unmount(string target)
    {
        Record($"Unmount {target}");
        lock (_gate)
        {
            _mounts.Remove(target);
        }
    }

    public void CreateNetworkNamespace(string path)
    {
        Record($"CreateNetworkNamespace {path}");
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, "");
        lock (_gate)
        {
            _mounts.Add(path);
        }
    }

    public void RemoveNetworkNamespace(string path)
    {
        Record($"RemoveNetworkNamespace {path}");
        lock (_gate)
        {
            _mounts.Remove(path);
        }

        File.Delete(path);
    }

    public bool Kill(int pid, int signal)
    {
        Record($"Kill {pid} {signal}");
        return IsAlive(pid);
    }

    public bool IsAlive(int pid)
    {
        if (pid <= 0 || pid == Environment.ProcessId)
        {
            return pid > 0;
        }

        // The fake runtime changes the set from other threads (tests fire calls at once); both lock the set itself.
        lock (Alive)
        {
            return Alive.Contains(pid);
        }
    }

    public IReadOnlyList<string> MountsUnder(string prefix)
    {
        lock (_gate)
        {
            return [.. _mounts.Where(m => m == prefix || m.StartsWith(prefix.TrimEnd('/') + "/", StringComparison.Ordinal))];
        }
    }

    public (string MountPoint, MountPropagation Propagation) PropagationOf(string path) => ("/", RootPropagation);

    public void KillProcessTree(int pid)
    {
        Record($"KillProcessTree {pid}");
        lock (Alive)
        {
            Alive.Remove(pid);
        }
    }

    public string HostName() => "node";

    /// <summary>The paths <see cref="IsTmpfs"/> answers true for.</summary>
    public HashSet<string> Tmpfs { get; } = new(StringComparer.Ordinal);

    public bool IsTmpfs(string path) => Tmpfs.Contains(path);

    public ulong HeldCapabilities() => ulong.MaxValue >> 23;

    public void BindIdMapped(string source, string target, string userNamespaceFile)
    {
        Record($"BindIdMapped {target}");
        lock (_gate)
        {
            _mounts.Add(target);
        }
    }

    public void Chown(string path, uint uid, uint gid) => Record($"Chown {path} {uid}:{gid}");

    public CgroupUsage? CgroupUsage(string cgroupsPath) => Cgroups.GetValueOrDefault(cgroupsPath);

    /// <summary>What MemAvailable says, as a test sets it.</summary>
    public long MemoryAvailable { get; set; } = 8L << 30;

    public long MemoryAvailableBytes() => MemoryAvailable;

    /// <summary>The page cache's writeback state, as a test sets it: by default nothing dirty under an 800 MiB threshold; null: unreadable.</summary>
    public DirtyPageCache? PageCache { get; set; } = new(0, 800L << 20);

    /// <summary>What the fake's filesystems have free, as a test sets it.</summary>
    public long DiskFree { get; set; } = 100L << 30;

    public long FreeBytes(string path) => DiskFree;

    public DirtyPageCache DirtyPageCache() => PageCache ?? throw new CrestException(ErrorKind.Internal, "/proc/meminfo has no Dirty line in kB");

    /// <summary>The processes each cgroup path holds, as a test sets them.</summary>
    public Dictionary<string, List<int>> CgroupMembers { get; } = new(StringComparer.Ordinal);

    public IReadOnlyList<int> CgroupProcesses(string cgroupsPath) => CgroupMembers.GetValueOrDefault(cgroupsPath) ?? [];

    /// <summary>
    /// What each read of a cgroup's tasks in vfork answers, in turn (the last answer repeats); none by default. Every read
    /// is recorded in <see cref="VforkReads"/>.
    /// </summary>
    public Queue<int[]> VforkAnswers { get; } = new();

    public List<string> VforkReads { get; } = [];

    public IReadOnlyList<int> TasksInVfork(string cgroupsPath)
    {
        lock (VforkReads)
        {
            VforkReads.Add(cgroupsPath);
            return VforkAnswers.Count switch
            {
                0 => [],
                1 => VforkAnswers.Peek(),
                _ => VforkAnswers.Dequeue(),
            };
        }
    }

    public (ulong Rx, ulong Tx)? InterfaceCounters(int pid, string name) =>
        Interfaces.TryGetValue((pid, name), out var counters) ? counters : null;

    public Task<Socket> ConnectLoopbackAsync(string netnsPath, int port, TimeSpan timeout) =>
        Task.FromException<Socket>(new CrestException(ErrorKind.Unavailable, $"port {port} in {netnsPath} refused the connection (no namespaces in unit tests)"));

    /// <summary>The TCP listeners the fake's process trees hold, as (tree root, port); a test adds them.</summary>
    public HashSet<(int Root, int Port)> Listeners { get; } = [];

    /// <summary>Records the call; done for a listener in <see cref="Listeners"/>, else the real one's answer for a port nobody listens on.</summary>
    public string? SetListenerNoDelay(int root, int port)
    {
        Record($"SetListenerNoDelay {root} {port}");
        return Listeners.Contains((root, port)) ? null : $"no process in the tree of process {root} holds a TCP socket listening on port {port}";
    }

    /// <summary>What the fake writes as a shared memory image and expects to read back.</summary>
    public const string SysVShmMarker = "recording-linux sysv shm\n";

    /// <summary>The fake has no namespaces: a namespace file must merely exist; the image is a marker, counted as no segments.</summary>
    public SysVShmSummary SaveSysVSharedMemory(string ipcNamespaceFile, string outputFile, CancellationToken ct)
    {
        Record($"SaveSysVSharedMemory {ipcNamespaceFile} {outputFile}");
        RequireNamespaceFile(ipcNamespaceFile);
        using (var output = new FileStream(outputFile, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
        {
            output.Write(System.Text.Encoding.ASCII.GetBytes(SysVShmMarker));
        }

        return new SysVShmSummary(0, 0, 0);
    }

    public SysVShmSummary RestoreSysVSharedMemory(string ipcNamespaceFile, string inputFile, long maxTotalBytes, CancellationToken ct)
    {
        Record($"RestoreSysVSharedMemory {ipcNamespaceFile} {inputFile}");
        RequireNamespaceFile(ipcNamespaceFile);
        if (File.ReadAllText(inputFile) != SysVShmMarker)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"shared memory image {inputFile} is not the recording fake's marker");
        }

        return new SysVShmSummary(0, 0, 0);
    }

    private static void RequireNamespaceFile(string ipcNamespaceFile)
    {
        if (!File.Exists(ipcNamespaceFile))
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"IPC namespace {ipcNamespaceFile} cannot be opened: No such file or directory");
        }
    }

    private void Record(string call)
    {
        lock (_gate)
        {
            _calls.Add(call);
        }
    }
}
