using Crest.Core;

namespace Crest.Oci;

/// <summary>Where a container sits: its pod's namespaces and files, and what was resolved for it.</summary>
public sealed record ContainerContext
{
    public required string ContainerId { get; init; }
    public required SandboxRecord Sandbox { get; init; }
    public required string RootfsPath { get; init; }
    public required ContainerDefaults? Image { get; init; }
    public required ProcessUser User { get; init; }
    public required string HostsFile { get; init; }
    public required string HostnameFile { get; init; }
    public required string ResolvConfFile { get; init; }
    public required string ShmPath { get; init; }
    public SpecSeccomp? LocalhostSeccomp { get; init; }
    /// <summary>Pid of the target container (NamespaceMode.Target for pid).</summary>
    public int TargetPid { get; init; }

    /// <summary>The request's devices, resolved to the host's device numbers.</summary>
    public IReadOnlyList<SpecDevice> Devices { get; init; } = [];

    /// <summary>
    /// What "all capabilities" means on this node (privileged, add ALL): the capabilities crestd itself holds,
    /// as containerd grants them. A node that withholds some would otherwise fail every privileged container in runc.
    /// </summary>
    public IReadOnlyList<string> NodeCapabilities { get; init; } = SpecBuilder.AllCapabilities;
}

/// <summary>Builds config.json for a container (from the CRI config and the image) and for a pod's infra process.</summary>
public static class SpecBuilder
{
    public static readonly IReadOnlyList<string> DefaultCapabilities =
    [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    ];

    /// <summary>Every capability, in Linux's numbering order (bit N is the Nth entry): the restore policy relies on it.</summary>
    public static readonly IReadOnlyList<string> AllCapabilities =
    [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
        "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
        "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
        "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    ];

    public static readonly IReadOnlyList<string> DefaultMaskedPaths =
    [
        "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
        "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
    ];

    public static readonly IReadOnlyList<string> DefaultReadonlyPaths = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

    /// <summary>
    /// RuntimeDefault: every syscall allowed except those that reach outside the container or the kernel's
    /// integrity (module loading, mounts, namespaces, kexec, clock, keyring, ptrace of others, ...), which fail with EPERM.
    /// </summary>
    public static SpecSeccomp RuntimeDefaultSeccomp { get; } = new()
    {
        DefaultAction = "SCMP_ACT_ALLOW",
        Architectures = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        Syscalls =
        [
            new SpecSyscall
            {
                Names =
                [
                    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module", "finit_module",
                    "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms", "init_module", "ioperm", "iopl", "kcmp",
                    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mount", "mount_setattr", "move_mount",
                    "name_to_handle_at", "nfsservctl", "open_by_handle_at", "open_tree", "perf_event_open", "pivot_root",
                    "process_vm_readv", "process_vm_writev", "quotactl", "quotactl_fd", "reboot", "request_key", "setns",
                    "settimeofday", "stime", "swapoff", "swapon", "sysfs", "_sysctl", "umount", "umount2", "unshare", "uselib",
                    "userfaultfd", "ustat", "vm86", "vm86old", "io_uring_setup", "io_uring_enter", "io_uring_register",
                ],
                Action = "SCMP_ACT_ERRNO",
                ErrnoRet = 1,
            },
            // A new user namespace is the way around most of the list above: refuse clone(CLONE_NEWUSER)...
            new SpecSyscall
            {
                Names = ["clone"],
                Action = "SCMP_ACT_ERRNO",
                ErrnoRet = 1,
                Args = [new SpecSyscallArg(0, 0x10000000, 0x10000000, "SCMP_CMP_MASKED_EQ")],
            },
            // ...and clone3, whose flags live in memory seccomp cannot read: ENOSYS makes libc fall back to clone.
            new SpecSyscall { Names = ["clone3"], Action = "SCMP_ACT_ERRNO", ErrnoRet = 38 },
        ],
    };

    public static RuntimeSpec ForContainer(ContainerSpec spec, ContainerContext ctx)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(ctx);
        var image = ctx.Image;
        var security = spec.Security;
        var privileged = security.Privileged;
        var sandbox = ctx.Sandbox;

        IReadOnlyList<string> args = spec.Command.Count > 0
            ? [.. spec.Command, .. spec.Args]
            : [.. image?.Entrypoint ?? [], .. spec.Args.Count > 0 ? spec.Args : image?.Cmd ?? []];
        if (args.Count == 0)
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"container {spec.Name} has no command: neither the request's command/args nor image {spec.Image}'s entrypoint/cmd name a program");
        }

        var capabilities = GrantedCapabilities(security, ctx.NodeCapabilities);
        var namespaces = new List<SpecNamespace> { new("mount") };
        var podNamespaces = sandbox.Spec.Namespaces;
        if (podNamespaces.HasPodUserNamespace)
        {
            // Joined by path with no mappings of its own: runc warns about (and may one day refuse) both at once.
            namespaces.Add(new("user", PodNamespace(sandbox, "user")));
        }

        if (podNamespaces.Network != NamespaceMode.Node && sandbox.NetnsPath is { } netns)
        {
            namespaces.Add(new("network", netns));
        }

        if (podNamespaces.Network != NamespaceMode.Node)
        {
            namespaces.Add(new("uts", PodNamespace(sandbox, "uts")));
        }

        switch (security.Namespaces.Ipc)
        {
            case NamespaceMode.Node:
                break;
            case NamespaceMode.Container:
                namespaces.Add(new("ipc"));
                break;
            default:
                namespaces.Add(new("ipc", PodNamespace(sandbox, "ipc")));
                break;
        }

        switch (security.Namespaces.Pid)
        {
            case NamespaceMode.Node:
                break;
            case NamespaceMode.Pod:
                namespaces.Add(new("pid", PodNamespace(sandbox, "pid")));
                break;
            case NamespaceMode.Target when ctx.TargetPid > 0:
                namespaces.Add(new("pid", $"/proc/{ctx.TargetPid}/ns/pid"));
                break;
            default:
                namespaces.Add(new("pid"));
                break;
        }

        var env = MergeEnv(image?.Env ?? [], spec.Envs);
        var mounts = DefaultMounts(privileged, ctx.ShmPath).ToList();
        mounts.Add(Bind("/etc/hosts", ctx.HostsFile, readOnly: security.ReadOnlyRootfs));
        mounts.Add(Bind("/etc/hostname", ctx.HostnameFile, readOnly: security.ReadOnlyRootfs));
        mounts.Add(Bind("/etc/resolv.conf", ctx.ResolvConfFile, readOnly: security.ReadOnlyRootfs));
        foreach (var m in spec.Mounts)
        {
            mounts.RemoveAll(existing => existing.Destination == m.ContainerPath);
            if (m.RecursiveReadOnly && (!m.ReadOnly || m.Propagation is not ("private" or "rprivate")))
            {
                throw new CrestException(ErrorKind.InvalidArgument,
                    $"container {spec.Name}: mount {m.HostPath} on {m.ContainerPath} asks for recursive_read_only, which needs readonly = true and private propagation "
                    + $"(it has readonly = {m.ReadOnly.ToString().ToLowerInvariant()}, propagation {m.Propagation}); a submount could otherwise be or become writable");
            }

            // "ro" makes only the mount itself read-only (submounts stay as they are); "rro" every mount below it too.
            var options = new List<string> { m.Recursive ? "rbind" : "bind", m.RecursiveReadOnly ? "rro" : m.ReadOnly ? "ro" : "rw" };
            options.Add(m.Propagation switch
            {
                "rshared" or "bidirectional" => "rshared",
                "rslave" or "host_to_container" => "rslave",
                _ => "rprivate",
            });
            mounts.Add(new SpecMount { Destination = m.ContainerPath, Type = "bind", Source = m.HostPath, Options = options });
        }

        var resources = Limits(spec.Resources) with
        {
            Devices = privileged
                ? [new SpecDeviceRule(true, "rwm")]
                : [new SpecDeviceRule(false, "rwm"), .. ctx.Devices.Select(d => new SpecDeviceRule(true, d.Permissions, d.Type, d.Major, d.Minor))],
        };

        return new RuntimeSpec
        {
            Process = new SpecProcess
            {
                Terminal = spec.Tty,
                User = new SpecUser { Uid = ctx.User.Uid, Gid = ctx.User.Gid, AdditionalGids = ctx.User.Groups.Count > 0 ? ctx.User.Groups : null },
                Args = args,
                Env = env,
                Cwd = spec.WorkingDir.Length > 0 ? spec.WorkingDir : string.IsNullOrEmpty(image?.WorkingDir) ? "/" : image.WorkingDir,
                Capabilities = new SpecCapabilities { Bounding = capabilities, Effective = capabilities, Permitted = capabilities },
                NoNewPrivileges = security.NoNewPrivileges,
            },
            Root = new SpecRoot { Path = ctx.RootfsPath, ReadOnly = security.ReadOnlyRootfs },
            Mounts = mounts,
            Linux = new SpecLinux
            {
                Namespaces = namespaces,
                Resources = resources,
                CgroupsPath = CgroupsPathOf(sandbox, ctx.ContainerId),
                MaskedPaths = privileged ? null : security.MaskedPaths ?? DefaultMaskedPaths,
                ReadonlyPaths = privileged ? null : security.ReadonlyPaths ?? DefaultReadonlyPaths,
                Seccomp = privileged ? null : security.Seccomp switch
                {
                    SeccompMode.RuntimeDefault => RuntimeDefaultSeccomp,
                    SeccompMode.Localhost => ctx.LocalhostSeccomp,
                    _ => null,
                },
                Devices = ctx.Devices.Count == 0 ? null : ctx.Devices,
                RootfsPropagation = RootfsPropagation(mounts),
            },
            Annotations = (spec.RuntimeAnnotations ?? spec.Annotations) is { Count: > 0 } annotations ? annotations : null,
        };
    }

    /// <summary>
    /// A shared or slave volume needs the container's root mount to be the same or the runtimes make its mounts private
    /// (crun by default, runc for every mount below a private parent): mounts then neither arrive from the host nor,
    /// for a shared volume, go back to it.
    /// </summary>
    private static string? RootfsPropagation(IEnumerable<SpecMount> mounts)
    {
        var options = mounts.SelectMany(m => m.Options ?? []).ToHashSet(StringComparer.Ordinal);
        return options.Contains("rshared") ? "rshared" : options.Contains("rslave") ? "rslave" : null;
    }

    /// <summary>The cgroup (cgroupfs path, as runc and crun take it) of a container or, by the sandbox's id, the infra of <paramref name="sandbox"/>.</summary>
    /// <summary>The memory and CPU limits of a container's resources (unset ones left to the runtime), for config.json and runc update.</summary>
    public static SpecResources Limits(ResourceSpec r)
    {
        ArgumentNullException.ThrowIfNull(r);
        return new SpecResources
        {
            Memory = r.MemoryLimitBytes > 0 ? new SpecMemory(r.MemoryLimitBytes) : null,
            Cpu = r is { CpuShares: 0, CpuQuota: 0, CpuPeriod: 0, CpusetCpus: "", CpusetMems: "" }
                ? null
                : new SpecCpu
                {
                    Shares = r.CpuShares > 0 ? (ulong)r.CpuShares : null,
                    Quota = r.CpuQuota != 0 ? r.CpuQuota : null,
                    Period = r.CpuPeriod > 0 ? (ulong)r.CpuPeriod : null,
                    Cpus = r.CpusetCpus.Length > 0 ? r.CpusetCpus : null,
                    Mems = r.CpusetMems.Length > 0 ? r.CpusetMems : null,
                },
        };
    }

    public static string CgroupsPathOf(SandboxRecord sandbox, string containerId)
    {
        ArgumentNullException.ThrowIfNull(sandbox);
        return $"{sandbox.CgroupsPath}/crest-{containerId}";
    }

    /// <summary>
    /// The pod's infra process: catatonit -P from the host, bind-mounted read-only into an empty rootfs; it holds the
    /// pod's UTS namespace, named <paramref name="hostname"/> (see <see cref="PodHostname"/>).
    /// </summary>
    public static RuntimeSpec ForInfra(SandboxRecord sandbox, string emptyRootfs, string catatonitPath, string shmPath, string hostname)
    {
        ArgumentNullException.ThrowIfNull(sandbox);
        var pod = sandbox.Spec;
        var namespaces = new List<SpecNamespace> { new("mount"), new("ipc"), new("uts") };
        if (pod.Namespaces.Network != NamespaceMode.Node && sandbox.NetnsPath is { } netns)
        {
            namespaces.Add(new("network", netns));
        }
        else if (pod.Namespaces.HasPodUserNamespace)
        {
            // A network namespace belongs to the user namespace that made it, and sysfs can be mounted only by that
            // namespace's root: so a user-namespaced pod's infra makes its own (as containerd 2 does), which crestd then
            // pins and hands to CNI. One made by crestd would belong to the host's and fail every /sys mount with EPERM.
            namespaces.Add(new("network"));
        }

        var mappings = pod.Namespaces.HasPodUserNamespace ? pod.Namespaces.User : null;
        if (mappings is not null)
        {
            namespaces.Add(new("user"));
        }

        if (pod.Namespaces.Pid != NamespaceMode.Node)
        {
            namespaces.Add(new("pid"));
        }

        var mounts = DefaultMounts(privileged: false, shmPath).ToList();
        mounts.Add(new SpecMount { Destination = "/catatonit", Type = "bind", Source = catatonitPath, Options = ["bind", "ro"] });
        return new RuntimeSpec
        {
            Process = new SpecProcess
            {
                Args = ["/catatonit", "-P"],
                Env = ["PATH=/"],
                Capabilities = new SpecCapabilities { Bounding = DefaultCapabilities, Effective = DefaultCapabilities, Permitted = DefaultCapabilities },
                NoNewPrivileges = true,
            },
            Root = new SpecRoot { Path = emptyRootfs, ReadOnly = true },
            Hostname = pod.Namespaces.Network == NamespaceMode.Node ? null : hostname,
            Mounts = mounts,
            Linux = new SpecLinux
            {
                Namespaces = namespaces,
                Resources = new SpecResources { Devices = [new SpecDeviceRule(false, "rwm")] },
                CgroupsPath = CgroupsPathOf(sandbox, sandbox.Id),
                Sysctl = pod.Sysctls.Count == 0 ? null : pod.Sysctls,
                MaskedPaths = DefaultMaskedPaths,
                ReadonlyPaths = DefaultReadonlyPaths,
                UidMappings = mappings?.Uids.Select(m => new SpecIdMapping(m.ContainerId, m.HostId, m.Length)).ToList(),
                GidMappings = mappings?.Gids.Select(m => new SpecIdMapping(m.ContainerId, m.HostId, m.Length)).ToList(),
            },
        };
    }

    /// <summary>
    /// A pod's host name: the config's, or the node's when it has none (as containerd and the kubelet expect; the pod's
    /// name is no host name: it may be longer than the kernel's 64 bytes). A host-network pod always has the node's.
    /// </summary>
    public static string PodHostname(PodSpec pod, string nodeHostname)
    {
        ArgumentNullException.ThrowIfNull(pod);
        return pod.Namespaces.Network == NamespaceMode.Node || pod.Hostname.Length == 0 ? nodeHostname : pod.Hostname;
    }

    /// <summary>The pod's pinned namespace file; /proc of the infra pid only for sandboxes made before pinning.</summary>
    private static string PodNamespace(SandboxRecord sandbox, string type) =>
        sandbox.PinnedNamespaces.TryGetValue(type, out var path) ? path : $"/proc/{sandbox.InfraPid}/ns/{type}";

    /// <summary>
    /// The capabilities a container gets from its security context (the spec's bounding, effective and permitted sets);
    /// "all" (privileged, add ALL) is <paramref name="node"/>'s set, every capability when it is not given.
    /// </summary>
    public static IReadOnlyList<string> GrantedCapabilities(SecuritySpec security, IReadOnlyList<string>? node = null)
    {
        ArgumentNullException.ThrowIfNull(security);
        node ??= AllCapabilities;
        return security.Privileged ? node : Capabilities(security.AddCapabilities, security.DropCapabilities, node);
    }

    /// <summary>The names of the capabilities set in <paramref name="mask"/> (bit N is capability N), in Linux's order.</summary>
    public static IReadOnlyList<string> CapabilityNames(ulong mask) =>
        AllCapabilities.Where((_, bit) => (mask & (1UL << bit)) != 0).ToList();

    internal static IReadOnlyList<string> Capabilities(IReadOnlyList<string> add, IReadOnlyList<string> drop, IReadOnlyList<string>? node = null)
    {
        static string Norm(string c) => c.StartsWith("CAP_", StringComparison.OrdinalIgnoreCase) ? c.ToUpperInvariant() : "CAP_" + c.ToUpperInvariant();
        var set = new List<string>(DefaultCapabilities);
        if (add.Any(a => a.Equals("ALL", StringComparison.OrdinalIgnoreCase)))
        {
            set = [.. node ?? AllCapabilities];
        }
        else
        {
            foreach (var a in add.Select(Norm).Where(a => !set.Contains(a)))
            {
                if (!AllCapabilities.Contains(a))
                {
                    throw new CrestException(ErrorKind.InvalidArgument, $"unknown capability {a} in add_capabilities");
                }

                set.Add(a);
            }
        }

        if (drop.Any(d => d.Equals("ALL", StringComparison.OrdinalIgnoreCase)))
        {
            set = add.Any(a => a.Equals("ALL", StringComparison.OrdinalIgnoreCase)) ? set : add.Select(Norm).ToList();
        }
        else
        {
            set.RemoveAll(c => drop.Select(Norm).Contains(c));
        }

        return set;
    }

    internal static IReadOnlyList<string> MergeEnv(IReadOnlyList<string> image, IReadOnlyList<KeyValuePair<string, string>> request)
    {
        var env = new List<string>();
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        void Set(string key, string entry)
        {
            if (index.TryGetValue(key, out var at))
            {
                env[at] = entry;
            }
            else
            {
                index[key] = env.Count;
                env.Add(entry);
            }
        }

        foreach (var e in image)
        {
            var eq = e.IndexOf('=', StringComparison.Ordinal);
            Set(eq < 0 ? e : e[..eq], e);
        }

        foreach (var (k, v) in request)
        {
            Set(k, $"{k}={v}");
        }

        if (!index.ContainsKey("PATH"))
        {
            Set("PATH", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        }

        return env;
    }

    private static IEnumerable<SpecMount> DefaultMounts(bool privileged, string shmPath)
    {
        yield return new SpecMount { Destination = "/proc", Type = "proc", Source = "proc", Options = ["nosuid", "noexec", "nodev"] };
        yield return new SpecMount { Destination = "/dev", Type = "tmpfs", Source = "tmpfs", Options = ["nosuid", "strictatime", "mode=755", "size=65536k"] };
        yield return new SpecMount { Destination = "/dev/pts", Type = "devpts", Source = "devpts", Options = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] };
        yield return new SpecMount { Destination = "/dev/mqueue", Type = "mqueue", Source = "mqueue", Options = ["nosuid", "noexec", "nodev"] };
        yield return new SpecMount { Destination = "/sys", Type = "sysfs", Source = "sysfs", Options = ["nosuid", "noexec", "nodev", privileged ? "rw" : "ro"] };
        yield return new SpecMount { Destination = "/sys/fs/cgroup", Type = "cgroup", Source = "cgroup", Options = ["nosuid", "noexec", "nodev", "relatime", privileged ? "rw" : "ro"] };
        yield return new SpecMount { Destination = "/dev/shm", Type = "bind", Source = shmPath, Options = ["rbind", "rw", "nosuid", "nodev", "noexec"] };
    }

    private static SpecMount Bind(string destination, string source, bool readOnly) =>
        new() { Destination = destination, Type = "bind", Source = source, Options = ["rbind", "rprivate", readOnly ? "ro" : "rw"] };
}
