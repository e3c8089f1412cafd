using System.Globalization;
using Crest.Core;
using Crest.Linux;

namespace Crest.Runtime;

/// <summary>Resolves who a container runs as: the request's run_as_* first, then the image's User, names looked up in the rootfs.</summary>
public static class ContainerUser
{
    public static (uint Uid, uint Gid, IReadOnlyList<uint> Groups) Resolve(SecuritySpec security, string? imageUser, string rootfs, string container)
    {
        ArgumentNullException.ThrowIfNull(security);
        uint uid;
        uint? gid = null;
        if (security.RunAsUser is { } u)
        {
            uid = (uint)u;
        }
        else
        {
            var (user, group) = Split(security.RunAsUsername is { Length: > 0 } name ? name : imageUser ?? "");
            uid = user.Length == 0 ? 0 : uint.TryParse(user, NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : LookupUser(rootfs, user, container).Uid;
            if (group.Length > 0)
            {
                gid = uint.TryParse(group, NumberStyles.None, CultureInfo.InvariantCulture, out var g) ? g : LookupGroup(rootfs, group, container);
            }
        }

        if (security.RunAsGroup is { } rg)
        {
            gid = (uint)rg;
        }

        gid ??= PrimaryGid(rootfs, uid) ?? 0;
        if (security.RunAsNonRoot && uid == 0)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {container} must run as non-root (run_as_non_root) but would run as uid 0; set run_as_user or use an image with a non-root USER");
        }

        return (uid, gid.Value, security.SupplementalGroups.Select(g => (uint)g).ToList());
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

    private static uint? PrimaryGid(string rootfs, uint uid)
    {
        foreach (var fields in Entries(rootfs, "etc/passwd"))
        {
            if (fields.Length >= 4 && uint.TryParse(fields[2], out var u) && u == uid && uint.TryParse(fields[3], out var gid))
            {
                return gid;
            }
        }

        return null;
    }

    private static IEnumerable<string[]> Entries(string rootfs, string file) =>
        (RootedFile.ReadAllText(rootfs, file) ?? "").Split('\n').Where(l => l.Length > 0 && !l.StartsWith('#')).Select(l => l.Split(':'));
}
