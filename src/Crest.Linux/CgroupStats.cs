using System.Globalization;

namespace Crest.Linux;

/// <summary>CPU and memory counters of one cgroup, read from cgroup v1 controllers or the v2 unified hierarchy.</summary>
public sealed record CgroupUsage(ulong CpuUsageNanoseconds, ulong MemoryUsageBytes, ulong MemoryWorkingSetBytes, ulong MemoryRssBytes);

public static class CgroupStats
{
    /// <summary>Reads the counters of the cgroup at <paramref name="cgroupsPath"/> (as given to runc with cgroupfs); null if it is gone.</summary>
    public static CgroupUsage? Read(string cgroupsPath, string root = "/sys/fs/cgroup")
    {
        var path = cgroupsPath.TrimStart('/');
        if (CgroupLayout.Detect() == CgroupMode.Unified)
        {
            var dir = Path.Combine(root, path);
            if (!Directory.Exists(dir))
            {
                return null;
            }

            var cpu = Field(Path.Combine(dir, "cpu.stat"), "usage_usec") * 1000;
            var usage = Number(Path.Combine(dir, "memory.current"));
            var stat = Path.Combine(dir, "memory.stat");
            var inactive = Field(stat, "inactive_file");
            return new CgroupUsage(cpu, usage, usage > inactive ? usage - inactive : 0, Field(stat, "anon"));
        }

        var memory = Path.Combine(root, "memory", path);
        var cpuacct = Directory.Exists(Path.Combine(root, "cpu,cpuacct")) ? Path.Combine(root, "cpu,cpuacct", path) : Path.Combine(root, "cpuacct", path);
        if (!Directory.Exists(memory))
        {
            return null;
        }

        var used = Number(Path.Combine(memory, "memory.usage_in_bytes"));
        var v1stat = Path.Combine(memory, "memory.stat");
        var inactiveFile = Field(v1stat, "total_inactive_file");
        return new CgroupUsage(Number(Path.Combine(cpuacct, "cpuacct.usage")), used, used > inactiveFile ? used - inactiveFile : 0, Field(v1stat, "total_rss"));
    }

    /// <summary>
    /// The processes in the cgroup at <paramref name="cgroupsPath"/> (as given to runc with cgroupfs), from the unified
    /// hierarchy or the v1 pids controller (memory's when there is none); empty if it is gone.
    /// </summary>
    public static IReadOnlyList<int> Processes(string cgroupsPath, string root = "/sys/fs/cgroup")
    {
        var path = cgroupsPath.TrimStart('/');
        var dir = CgroupLayout.Detect() == CgroupMode.Unified
            ? Path.Combine(root, path)
            : Directory.Exists(Path.Combine(root, "pids")) ? Path.Combine(root, "pids", path) : Path.Combine(root, "memory", path);
        var procs = Path.Combine(dir, "cgroup.procs");
        try
        {
            return [.. File.ReadLines(procs).Select(l => int.TryParse(l, NumberStyles.None, CultureInfo.InvariantCulture, out var pid) ? pid : 0).Where(pid => pid > 0)];
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            return [];
        }
    }

    private static ulong Number(string file) =>
        File.Exists(file) && ulong.TryParse(File.ReadAllText(file).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : 0;

    private static ulong Field(string file, string key)
    {
        if (!File.Exists(file))
        {
            return 0;
        }

        foreach (var line in File.ReadLines(file))
        {
            var space = line.IndexOf(' ', StringComparison.Ordinal);
            if (space > 0 && line.AsSpan(0, space).SequenceEqual(key) && ulong.TryParse(line.AsSpan(space + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var v))
            {
                return v;
            }
        }

        return 0;
    }
}
