namespace Crest.Linux;

/// <summary>How mounts below a mount point reach its peers (mount_namespaces(7)), as /proc/self/mountinfo says.</summary>
public enum MountPropagation
{
    /// <summary>No peers: mounts neither arrive nor leave.</summary>
    Private,

    /// <summary>Receives its master's mounts and sends none ("master:N" without "shared:N").</summary>
    Slave,

    /// <summary>In a peer group ("shared:N"): mounts go both ways.</summary>
    Shared,
}

public static class MountInfo
{
    /// <summary>
    /// The propagation of the mount that holds <paramref name="path"/> (the longest mount point that is a prefix of
    /// it, the last such mount when several are stacked) in a mountinfo listing (proc(5) format).
    /// </summary>
    public static (string MountPoint, MountPropagation Propagation) PropagationOf(string path, IEnumerable<string> lines)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(lines);
        var best = ("/", MountPropagation.Private);
        var bestLength = -1;
        foreach (var line in lines)
        {
            // fields: id parent major:minor root mountpoint options [optional...] - fstype source superoptions
            var dash = line.IndexOf(" - ", StringComparison.Ordinal);
            var head = (dash < 0 ? line : line[..dash]).Split(' ');
            if (head.Length < 6)
            {
                continue;
            }

            var mountPoint = head[4].Replace("\\040", " ", StringComparison.Ordinal);
            var holds = mountPoint == "/" || path == mountPoint || path.StartsWith(mountPoint + "/", StringComparison.Ordinal);
            if (!holds || mountPoint.Length < bestLength)
            {
                continue;
            }

            var optional = head.Skip(6).ToList();
            var propagation = optional.Any(o => o.StartsWith("shared:", StringComparison.Ordinal)) ? MountPropagation.Shared
                : optional.Any(o => o.StartsWith("master:", StringComparison.Ordinal)) ? MountPropagation.Slave
                : MountPropagation.Private;
            best = (mountPoint, propagation);
            bestLength = mountPoint.Length;
        }

        return best;
    }
}
