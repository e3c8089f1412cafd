using System.Globalization;
using Crest.Core;
using Crest.Oci;

namespace Crest.Checkpoint.Format;

/// <summary>What a checkpoint would put back, and every way it would exceed the request.</summary>
public sealed record PolicyAssessment(IReadOnlyList<CriuThread> Threads, CriuIsolation Isolation, IReadOnlyList<PolicyViolation> Violations);

/// <summary>One way a checkpoint would grant more than its restore request allows.</summary>
public sealed record PolicyViolation(uint Pid, uint Tid, string Command, string Check, string Field, string Claimed, string Allowed)
{
    public override string ToString() =>
        $"task {Pid}{(Tid != Pid ? $"/{Tid}" : "")} ({Command}): {Field} is {Claimed} in the checkpoint, but the request allows {Allowed}";
}

/// <summary>
/// A restore never grants more than the request: CRIU puts back the credentials recorded in its images, so the
/// runtime spec does not bind a restored process. Before CRIU runs, every thread's capability sets must be subsets of
/// what the request's security context grants; its uids and gids must be those the request allows; and if the request
/// asks for a seccomp profile, every thread must be under a seccomp filter. <see cref="EvaluateIsolation"/> adds
/// namespaces, mounts and device nodes. Checks named in <c>[restore] relaxed_checks</c> are reported but not
/// enforced, and logged.
/// </summary>
public static class RestorePolicy
{
    /// <summary>Linux capability numbers (linux/capability.h): SpecBuilder's list is in that order.</summary>
    private static readonly IReadOnlyList<string> CapabilityNames = SpecBuilder.AllCapabilities;

    private static readonly Dictionary<string, int> CapabilityBits =
        CapabilityNames.Select((name, bit) => (name, bit)).ToDictionary(x => x.name, x => x.bit, StringComparer.Ordinal);

    public static readonly IReadOnlyList<string> Checks = ["capabilities", "users", "seccomp", "namespaces", "mounts", "devices"];

    /// <summary>Mount destinations every Crest container has (SpecBuilder's default mounts and the pod files).</summary>
    private static readonly string[] StandardMountPoints =
        ["/proc", "/dev", "/dev/pts", "/dev/mqueue", "/dev/shm", "/sys", "/sys/fs/cgroup", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/console"];

    /// <summary>Filesystems a runtime mounts inside a container by itself; CRIU may mount these, at those places only.</summary>
    private static readonly HashSet<string> ContainerFileSystems = new(StringComparer.Ordinal) { "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2" };

    /// <summary>The device nodes runc creates in every container's /dev (null, zero, full, random, urandom, tty, console, ptmx).</summary>
    public static readonly IReadOnlyList<(char Kind, int Major, int Minor)> StandardDevices =
        [('c', 1, 3), ('c', 1, 5), ('c', 1, 7), ('c', 1, 8), ('c', 1, 9), ('c', 5, 0), ('c', 5, 1), ('c', 5, 2)];

    public static ulong Mask(IEnumerable<string> capabilities)
    {
        ArgumentNullException.ThrowIfNull(capabilities);
        ulong mask = 0;
        foreach (var c in capabilities)
        {
            if (CapabilityBits.TryGetValue(c, out var bit))
            {
                mask |= 1UL << bit;
            }
        }

        return mask;
    }

    public static string Names(ulong mask)
    {
        if (mask == 0)
        {
            return "none";
        }

        var names = new List<string>();
        for (var bit = 0; bit < 64; bit++)
        {
            if ((mask & (1UL << bit)) != 0)
            {
                names.Add(bit < CapabilityNames.Count ? CapabilityNames[bit] : $"capability {bit}");
            }
        }

        return string.Join(",", names);
    }

    /// <summary>
    /// Isolation: every task shares the first task's namespaces (the ones the new pod and container replace) and none
    /// brings a user namespace; every mount CRIU would recreate is one the request's container has, at the same place,
    /// of a filesystem a runtime mounts in containers (external binds are provided by the runtime from the new spec);
    /// every device node in tmpfs contents is a standard one or one the request maps. <paramref name="requestDevices"/>
    /// are the host numbers of the request's devices.
    /// </summary>
    public static IReadOnlyList<PolicyViolation> EvaluateIsolation(
        CriuIsolation isolation, ContainerSpec request, IReadOnlyList<(char Kind, int Major, int Minor)> requestDevices, IReadOnlyDictionary<uint, string> commands)
    {
        ArgumentNullException.ThrowIfNull(isolation);
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(requestDevices);
        ArgumentNullException.ThrowIfNull(commands);
        var violations = new List<PolicyViolation>();
        var root = isolation.Namespaces.Keys.DefaultIfEmpty().Min();
        string Command(uint pid) => commands.GetValueOrDefault(pid, "");
        void Add(uint pid, string check, string field, string claimed, string permitted) =>
            violations.Add(new PolicyViolation(pid, pid, Command(pid), check, field, claimed, permitted));

        if (isolation.Namespaces.TryGetValue(root, out var rootIds))
        {
            foreach (var (pid, ids) in isolation.Namespaces.Where(kv => kv.Key != root).OrderBy(kv => kv.Key))
            {
                foreach (var (kind, id) in ids)
                {
                    if (rootIds.TryGetValue(kind, out var expected) && expected != id)
                    {
                        Add(pid, "namespaces", $"{kind} namespace", $"one of its own (id {id})", $"the container's (id {expected}), the only one the new pod provides");
                    }
                }
            }
        }

        foreach (var image in isolation.UserNamespaceImages)
        {
            Add(root, "namespaces", "user namespace", $"a user namespace of its own ({image})", "the node's user namespace (Crest does not run containers in user namespaces)");
        }

        if (!request.Security.Privileged)
        {
            var places = new HashSet<string>(StandardMountPoints, StringComparer.Ordinal);
            places.UnionWith(request.Mounts.Select(m => Normalise(m.ContainerPath)));
            places.UnionWith(request.Devices.Select(d => Normalise(d.ContainerPath)));
            places.UnionWith((request.Security.MaskedPaths ?? SpecBuilder.DefaultMaskedPaths).Select(Normalise));
            places.UnionWith((request.Security.ReadonlyPaths ?? SpecBuilder.DefaultReadonlyPaths).Select(Normalise));
            foreach (var m in isolation.Mounts.Where(m => m.MountPoint != "/"))
            {
                // Masks and read-only views (engines differ: Podman masks /proc/interrupts, Crest does not): a tmpfs or
                // /dev/null over a path in /proc or /sys, or a bind of proc or sysfs within itself, hides or re-shows
                // only what the container has anyway.
                if ((m.MountPoint.StartsWith("/proc/", StringComparison.Ordinal) && m.FsType is "proc" or "tmpfs")
                    || (m.MountPoint.StartsWith("/sys/", StringComparison.Ordinal) && m.FsType is "sysfs" or "tmpfs"))
                {
                    continue;
                }

                var place = places.Contains(m.MountPoint) || m.MountPoint.StartsWith("/sys/fs/cgroup/", StringComparison.Ordinal);
                if (!place || (!m.External && !ContainerFileSystems.Contains(m.FsType)))
                {
                    Add(root, "mounts", $"the mount at {m.MountPoint}", $"{m.FsType} from {m.Source}{(m.External ? " (provided by the runtime)" : "")}",
                        place ? $"only {string.Join(", ", ContainerFileSystems.Order(StringComparer.Ordinal))} mounted by CRIU itself" : "the container's mounts (the standard ones, masked and read-only paths, and the request's mounts and devices)");
                }
            }
        }

        var devices = StandardDevices.Concat(requestDevices).ToHashSet();
        foreach (var node in isolation.DeviceNodes)
        {
            if (!devices.Contains((node.Kind, node.Major, node.Minor)))
            {
                Add(root, "devices", $"device node {node.Path} in {node.Image}", $"{(node.Kind == 'b' ? "block" : "character")} device {node.Major}:{node.Minor}",
                    "the standard devices and the request's devices");
            }
        }

        return violations;
    }

    private static string Normalise(string path) => "/" + path.Trim('/');

    /// <summary>
    /// Without run_as_user, the user comes from run_as_username or the image's USER, resolved in the rootfs once the
    /// container's spec is built. A non-root user is a ceiling: every thread's uids must be it, and its groups those the
    /// spec resolved. Root may become anyone, so a root user constrains nothing here (capabilities still do).
    /// </summary>
    public static IReadOnlyList<PolicyViolation> EvaluateResolvedUser(IReadOnlyList<CriuThread> threads, uint uid, uint gid, IReadOnlyCollection<uint> additionalGids)
    {
        ArgumentNullException.ThrowIfNull(threads);
        if (uid == 0)
        {
            return [];
        }

        var violations = threads.Where(t => t.Uids.Any(u => u != uid)).Select(t => new PolicyViolation(t.Pid, t.Tid, t.Command, "users",
            "uid (real/effective/saved/fs)", string.Join("/", t.Uids), $"uid {uid}, the user run_as_username or the image's USER resolves to")).ToList();
        violations.AddRange(EvaluateResolvedGroups(threads, gid, additionalGids));
        return violations;
    }

    /// <summary>
    /// With run_as_user set and run_as_group not, the runtime takes the group from the image's /etc/passwd (or 0),
    /// which is known only once the container's spec is built: every thread's gids must be that group, and its
    /// supplementary groups among it and the spec's additional gids.
    /// </summary>
    public static IReadOnlyList<PolicyViolation> EvaluateResolvedGroups(IReadOnlyList<CriuThread> threads, uint gid, IReadOnlyCollection<uint> additionalGids)
    {
        ArgumentNullException.ThrowIfNull(threads);
        ArgumentNullException.ThrowIfNull(additionalGids);
        var violations = new List<PolicyViolation>();
        var permitted = additionalGids.Append(gid).ToHashSet();
        foreach (var t in threads)
        {
            if (t.Gids.Any(g => g != gid))
            {
                violations.Add(new PolicyViolation(t.Pid, t.Tid, t.Command, "users", "gid (real/effective/saved/fs)", string.Join("/", t.Gids),
                    $"gid {gid}, the run_as_user's group in the image"));
            }

            if (t.Groups.Any(g => !permitted.Contains(g)))
            {
                violations.Add(new PolicyViolation(t.Pid, t.Tid, t.Command, "users", "supplementary groups", string.Join(",", t.Groups),
                    $"groups {string.Join(",", permitted.Order())}"));
            }
        }

        return violations;
    }

    /// <summary>
    /// Reads the images and evaluates every check against <paramref name="request"/>: credentials and capabilities of
    /// each thread, then namespaces, mounts and device nodes. A malformed image or tmpfs contents past
    /// <paramref name="maxTmpfsBytes"/> throw; violations are returned for the caller to enforce or relax.
    /// </summary>
    public static PolicyAssessment Assess(string imagesDir, ContainerSpec request, long maxTmpfsBytes)
    {
        ArgumentNullException.ThrowIfNull(request);
        var threads = CriuImages.ReadThreads(imagesDir);
        var isolation = CriuImages.ReadIsolation(imagesDir, maxTmpfsBytes);
        var devices = new List<(char, int, int)>();
        foreach (var d in request.Devices)
        {
            try
            {
                var (type, major, minor) = Linux.DeviceNumbers.Of(d.HostPath);
                devices.Add((type[0], (int)major, (int)minor));
            }
            catch (CrestException)
            {
                // A device missing on this node fails the create on its own; it grants nothing here.
            }
        }

        var commands = threads.Where(t => t.Tid == t.Pid).GroupBy(t => t.Pid).ToDictionary(g => g.Key, g => g.First().Command);
        IReadOnlyList<PolicyViolation> violations = [.. Evaluate(threads, request.Security), .. EvaluateIsolation(isolation, request, devices, commands)];
        return new PolicyAssessment(threads, isolation, violations);
    }

    public static IReadOnlyList<PolicyViolation> Evaluate(IReadOnlyList<CriuThread> threads, SecuritySpec request)
    {
        ArgumentNullException.ThrowIfNull(threads);
        ArgumentNullException.ThrowIfNull(request);
        var allowed = Mask(SpecBuilder.GrantedCapabilities(request));
        var violations = new List<PolicyViolation>();
        foreach (var t in threads)
        {
            void Add(string check, string field, string claimed, string permitted) =>
                violations.Add(new PolicyViolation(t.Pid, t.Tid, t.Command, check, field, claimed, permitted));

            foreach (var (field, value) in new[] { ("effective capabilities", t.Effective), ("permitted capabilities", t.Permitted), ("inheritable capabilities", t.Inheritable), ("bounding capabilities", t.Bounding) })
            {
                if ((value & ~allowed) != 0)
                {
                    Add("capabilities", field, Names(value & ~allowed) + " beyond the grant", Names(allowed));
                }
            }

            var uids = string.Join("/", t.Uids.Select(u => u.ToString(CultureInfo.InvariantCulture)));
            if (request.RunAsUser is { } user && t.Uids.Any(u => u != user))
            {
                Add("users", "uid (real/effective/saved/fs)", uids, $"run_as_user {user}");
            }
            else if (request.RunAsNonRoot && t.Uids.Any(u => u == 0))
            {
                Add("users", "uid (real/effective/saved/fs)", uids, "a non-root user (run_as_non_root)");
            }

            if (request.RunAsGroup is { } group && t.Gids.Any(g => g != group))
            {
                Add("users", "gid (real/effective/saved/fs)", string.Join("/", t.Gids), $"run_as_group {group}");
            }

            if (request.RunAsGroup is not null)
            {
                var permittedGroups = request.SupplementalGroups.Append(request.RunAsGroup ?? t.Gids[0]).ToHashSet();
                var extra = t.Groups.Where(g => !permittedGroups.Contains(g)).ToList();
                if (extra.Count > 0)
                {
                    Add("users", "supplementary groups", string.Join(",", t.Groups), $"groups {string.Join(",", permittedGroups)}");
                }
            }

            if (request.Seccomp != SeccompMode.Unconfined && !request.Privileged && t.Seccomp != "filter")
            {
                Add("seccomp", "seccomp mode", t.Seccomp, $"a seccomp filter ({request.Seccomp} profile requested)");
            }
        }

        return violations;
    }
}
