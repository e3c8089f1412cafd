namespace Crest.Linux;

/// <summary>How the host mounts cgroups. This VM family is hybrid: v1 controllers plus v2 at /sys/fs/cgroup/unified.</summary>
public enum CgroupMode
{
    /// <summary>Pure cgroup v2 at /sys/fs/cgroup.</summary>
    Unified,

    /// <summary>v1 controllers with a v2 hierarchy (no controllers) at /sys/fs/cgroup/unified.</summary>
    Hybrid,

    /// <summary>v1 only.</summary>
    Legacy,
}

public static class CgroupLayout
{
    /// <summary>
    /// Controllers enabled in the v2 hierarchy of a hybrid host. crun refuses such hosts
    /// ("cgroups in hybrid mode not supported"), whatever its cgroup manager; runc handles them. systemd's hybrid
    /// layout leaves none there; scripts/install-deps.sh binds any it finds (hugetlb on this VM) to v1.
    /// </summary>
    public static IReadOnlyList<string> HybridV2Controllers()
    {
        const string path = "/sys/fs/cgroup/unified/cgroup.controllers";
        return Detect() == CgroupMode.Hybrid && File.Exists(path)
            ? File.ReadAllText(path).Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            : [];
    }

    /// <summary>Reads the cgroup mode of this host from /proc/self/mountinfo.</summary>
    public static CgroupMode Detect() => FromMountInfo(File.ReadLines("/proc/self/mountinfo"));

    /// <summary>Classifies a mountinfo listing (one mount per line, proc(5) format).</summary>
    public static CgroupMode FromMountInfo(IEnumerable<string> lines)
    {
        ArgumentNullException.ThrowIfNull(lines);
        var v2At = new List<string>();
        var v1 = false;
        foreach (var line in lines)
        {
            // fields: id parent major:minor root mountpoint options [optional...] - fstype source superoptions
            var dash = line.IndexOf(" - ", StringComparison.Ordinal);
            if (dash < 0)
            {
                continue;
            }

            var head = line[..dash].Split(' ');
            var tail = line[(dash + 3)..].Split(' ');
            if (head.Length < 5 || tail.Length < 1)
            {
                continue;
            }

            var mountPoint = head[4];
            switch (tail[0])
            {
                case "cgroup2":
                    v2At.Add(mountPoint);
                    break;
                case "cgroup":
                    v1 = true;
                    break;
            }
        }

        if (v2At.Contains("/sys/fs/cgroup"))
        {
            return CgroupMode.Unified;
        }

        return v1 && v2At.Count > 0 ? CgroupMode.Hybrid : CgroupMode.Legacy;
    }
}
