using System.Globalization;
using Crest.Core;
using Crest.Linux;

namespace Crest.Runtime;

/// <summary>
/// Resolves who a container runs as: the request's run_as_* first, then the image's User, names looked up in the rootfs;
/// supplementary groups as containerd makes them: the primary group, the image's /etc/group memberships of the user
/// (policy Merge, the default; not with Strict) and the requested supplemental_groups, sorted as the kernel keeps them.
/// </summary>
public static class ContainerUser
{
    public static ProcessUser Resolve(SecuritySpec security, string? imageUser, string rootfs, string container)
    {
        ArgumentNullException.ThrowIfNull(security);
        if (security.RunAsGroup is { } group0 && security.RunAsUser is null && string.IsNullOrEmpty(security.RunAsUsername))
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"container {container} sets run_as_group {group0} without run_as_user or run_as_username; a group needs a user (the image's USER is not one)");
        }

        uint uid;
        uint? gid = null;
        string? userName = null;
        if (security.RunAsUser is { } u)
        {
            uid = (uint)u;
        }
        else
        {
            var (user, group) = Split(security.RunAsUsername is { Length: > 0 } name ? name : imageUser ?? "");
            if (user.Length == 0)
            {
                uid = 0;
            }
            else if (uint.TryParse(user, NumberStyles.None, CultureInfo.InvariantCulture, out var n))
            {
                uid = n;
            }
            else
            {
                uid = LookupUser(rootfs, user, container).Uid;
                userName = user;
            }

            if (group.Length > 0)
            {
                gid = uint.TryParse(group, NumberStyles.None, CultureInfo.InvariantCulture, out var g) ? g : LookupGroup(rootfs, group, container);
            }
        }

        var passwd = PasswdEntry(rootfs, uid);
        userName ??= passwd?.Name;
        if (security.RunAsGroup is { } rg)
        {
            gid = (uint)rg;
        }

        gid ??= passwd?.Gid ?? 0;
        if (security.RunAsNonRoot && uid == 0)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {container} must run as non-root (run_as_non_root) but would run as uid 0; set run_as_user or use an image with a non-root USER");
        }

        var groups = new SortedSet<uint> { gid.Value };
        if (security.SupplementalGroupsPolicy == SupplementalGroupsPolicy.Merge && userName is not null)
        {
            groups.UnionWith(MemberOf(rootfs, userName));
        }

        groups.UnionWith(security.SupplementalGroups.Select(g => (uint)g));
        return new ProcessUser(uid, gid.Value, [.. groups]);
    }

    /// <summary>The gids of the groups in the rootfs's /etc/group that list <paramref name="user"/> as a member.</summary>
    private static IEnumerable<uint> MemberOf(string rootfs, string user)
    {
        foreach (var fields in Entries(rootfs, "etc/group"))
        {
            if (fields.Length >= 4 && fields[3].Split(',').Contains(user, StringComparer.Ordinal) && uint.TryParse(fields[2], out var gid))
            {
                yield return gid;
            }
        }
    }

    private static (string Name, uint Gid)? PasswdEntry(string rootfs, uint uid)
    {
        foreach (var fields in Entries(rootfs, "etc/passwd"))
        {
            if (fields.Length >= 4 && uint.TryParse(fields[2], out var u) && u == uid && uint.TryParse(fields[3], out var gid))
            {
                return (fields[0], gid);
            }
        }

        return null;
    }

    private static (string User, string Group) Split(string spec)
    {
        var colon = spec.IndexOf(':', StringComparison.Ordinal);
        return colon < 0 ? (spec, "") : (spec[..colon], spec[(colon + 1)..]);
    }

    private static (uint Uid, uint Gid) LookupUser(string rootfs, string name, string container)
    {
        foreach (var fields in Entries(rootfs, "etc/passwd"))
        {
            if (fields.Length >= 4 && fields[0] == name && uint.TryParse(fields[2], out var uid) && uint.TryParse(fields[3], out var gid))
            {
                return (uid, gid);
            }
        }

        throw new CrestException(ErrorKind.InvalidArgument, $"container {container}: user \"{name}\" is not in the image's /etc/passwd");
    }

    private static uint LookupGroup(string rootfs, string name, string container)
    {
        foreach (var fields in Entries(rootfs, "etc/group"))
        {
            if (fields.Length >= 3 && fields[0] == name && uint.TryParse(fields[2], out var gid))
            {
                return gid;
            }
        }

        throw new CrestException(ErrorKind.InvalidArgument, $"container {container}: group \"{name}\" is not in the image's /etc/group");
    }

    private static IEnumerable<string[]> Entries(string rootfs, string file) =>
        (RootedFile.ReadAllText(rootfs, file) ?? "").Split('\n').Where(l => l.Length > 0 && !l.StartsWith('#')).Select(l => l.Split(':'));
}
