using System.Globalization;

namespace Crest.Bench;

/// <summary>Where one soak's crestd leaves traces on the host: its temporary roots, its cgroup parent, its bridge and its IP allocator.</summary>
internal sealed record SoakScope(string Dir, int CrestdPid, string CgroupParent, string Bridge, string LeaseDir)
{
    public string Root => Path.Combine(Dir, "root");

    public string State => Path.Combine(Dir, "state");
}

/// <summary>
/// What a crestd holds on the host at one moment, each kind counted only where this soak's crestd puts it (the host runs
/// other crestds: tests, containerd). Taken before the cycles and after them; anything left at the end is a leak.
/// </summary>
internal sealed record SoakCensus(
    IReadOnlyList<string> Mounts,
    IReadOnlyList<string> NetnsFiles,
    IReadOnlyList<string> Cgroups,
    IReadOnlyList<string> Veths,
    IReadOnlyList<string> Leases,
    IReadOnlyList<string> Processes,
    IReadOnlyList<string> ObjectDirs,
    int OpenFds,
    IReadOnlyDictionary<string, int> FdsByKind,
    long WalBytes,
    long RssBytes)
{
    /// <summary>The kinds of thing that must be back where they were; fds, WAL and RSS are compared separately.</summary>
    public IEnumerable<(string Kind, IReadOnlyList<string> Items)> Kinds()
    {
        yield return ("mounts under the roots", Mounts);
        yield return ("netns files", NetnsFiles);
        yield return ("cgroup dirs", Cgroups);
        yield return ("veths on the bridge", Veths);
        yield return ("host-local leases", Leases);
        yield return ("conmon/runc/CRIU or pod processes", Processes);
        yield return ("container/sandbox dirs", ObjectDirs);
    }

    public static SoakCensus Take(SoakScope scope) => new(
        MountsUnder(scope.Dir),
        Entries(Path.Combine(scope.State, "netns")),
        CgroupsBelow(scope.CgroupParent),
        Entries($"/sys/class/net/{scope.Bridge}/brif"),
        // host-local keeps one file per address in use, plus its lock and last-reserved markers.
        Entries(scope.LeaseDir).Where(f => f != "lock" && !f.StartsWith("last_reserved_ip", StringComparison.Ordinal)).ToList(),
        ProcessesOf(scope),
        new[] { Path.Combine(scope.Root, "containers"), Path.Combine(scope.Root, "restores"), Path.Combine(scope.Root, "pod-operations"),
                Path.Combine(scope.State, "containers"), Path.Combine(scope.State, "sandboxes"), Path.Combine(scope.State, "exits"), Path.Combine(scope.State, "attach") }
            .SelectMany(d => Entries(d).Select(e => Path.GetRelativePath(scope.Dir, Path.Combine(d, e)))).ToList(),
        Directory.GetFileSystemEntries($"/proc/{scope.CrestdPid}/fd").Length,
        FdKinds(scope.CrestdPid),
        File.Exists(Path.Combine(scope.Root, "crest.db-wal")) ? new FileInfo(Path.Combine(scope.Root, "crest.db-wal")).Length : 0,
        Rss(scope.CrestdPid));

    public static long Rss(int pid)
    {
        var line = File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
    }

    private static List<string> Entries(string dir) =>
        Directory.Exists(dir) ? [.. Directory.EnumerateFileSystemEntries(dir).Select(e => Path.GetFileName(e)).Order(StringComparer.Ordinal)] : [];

    /// <summary>Mount points under the soak's directory, from this process's mountinfo (field 5, octal escapes undone).</summary>
    private static List<string> MountsUnder(string dir) =>
        [.. File.ReadLines("/proc/self/mountinfo")
            .Select(l => l.Split(' ')[4].Replace("\\040", " ", StringComparison.Ordinal))
            .Where(m => m.StartsWith(dir + "/", StringComparison.Ordinal))];

    /// <summary>Every cgroup below the soak's own parent in every hierarchy (v1 controllers and the unified one; each pod's infra and each container get one).</summary>
    private static List<string> CgroupsBelow(string parent) =>
        [.. Hierarchies(parent).SelectMany(top => Directory.EnumerateDirectories(top, "*", SearchOption.AllDirectories))
            .Select(d => Path.GetRelativePath("/sys/fs/cgroup", d))];

    /// <summary>The soak's cgroup parent in each hierarchy where runc made it.</summary>
    public static IEnumerable<string> Hierarchies(string parent) =>
        new[] { "/sys/fs/cgroup" }.Concat(Directory.EnumerateDirectories("/sys/fs/cgroup"))
            .Select(h => Path.Combine(h, parent)).Where(Directory.Exists).ToList();

    /// <summary>crestd's open descriptors by kind (socket, pipe, anon_inode:..., or a file's name), for telling a leak from a pool.</summary>
    public static Dictionary<string, int> FdKinds(int pid)
    {
        var kinds = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var fd in Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd"))
        {
            string kind;
            try
            {
                var target = new FileInfo(fd).LinkTarget ?? "?";
                kind = target.StartsWith('/') ? Path.GetFileName(target) : target.Split(':')[0] + (target.StartsWith("anon_inode:", StringComparison.Ordinal) ? ":" + target[11..] : "");
            }
            catch (IOException)
            {
                continue;
            }

            kinds[kind] = kinds.GetValueOrDefault(kind) + 1;
        }

        return kinds;
    }

    /// <summary>
    /// Processes that are this crestd's doing: a monitor or runtime naming its roots on the command line (conmon, runc,
    /// crun, CRIU), and anything in its cgroup parent (pod infras, containers, exec'd commands). crestd itself is not one.
    /// </summary>
    private static List<string> ProcessesOf(SoakScope scope)
    {
        var found = new List<string>();
        foreach (var proc in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(proc), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) || pid == scope.CrestdPid || pid == Environment.ProcessId)
            {
                continue;
            }

            try
            {
                var cmdline = File.ReadAllText(Path.Combine(proc, "cmdline")).Replace('\0', ' ').Trim();
                var cgroup = File.ReadAllText(Path.Combine(proc, "cgroup"));
                if (cmdline.Contains(scope.Dir, StringComparison.Ordinal) || cgroup.Contains("/" + scope.CgroupParent + "/", StringComparison.Ordinal))
                {
                    found.Add($"{pid} {(cmdline.Length > 120 ? cmdline[..120] + "..." : cmdline)}");
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Gone while read.
            }
        }

        return found;
    }
}
