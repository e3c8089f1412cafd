using Crest.Core;

namespace Crest.Runtime;

/// <summary>Containers in a pod with a user namespace of its own: a rootfs whose image files the pod's root owns.</summary>
public sealed partial class ContainerService
{
    /// <summary>A container lives in its pod's user namespace; a request that names another one is refused.</summary>
    private static void CheckUserNamespace(ContainerSpec spec, SandboxRecord sandbox)
    {
        var pod = sandbox.Spec.Namespaces;
        if (spec.Security.Namespaces.User is not { } wanted)
        {
            return;
        }

        var podMode = pod.HasPodUserNamespace ? NamespaceMode.Pod : NamespaceMode.Node;
        var same = wanted.Mode == podMode
            && (podMode == NamespaceMode.Node || (wanted.Uids.SequenceEqual(pod.User!.Uids) && wanted.Gids.SequenceEqual(pod.User.Gids)));
        if (!same)
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"container {spec.Name} asks for user namespace mode {wanted.Mode.ToString().ToUpperInvariant()} with its own mappings, but pod sandbox {sandbox.Id} "
                + $"has mode {podMode.ToString().ToUpperInvariant()}; a container shares its pod's user namespace, so give it the pod's userns_options or none");
        }
    }

    /// <summary>
    /// Binds each image layer id-mapped through the pod's user namespace (under <c>idmapped/N</c>), so the overlay
    /// shows files owned by host uid 0 as the pod's root; the writable layer is made the pod's root's own. Returns the
    /// new lower directories, in the same order.
    /// </summary>
    private List<string> IdMapLayers(string dir, IReadOnlyList<string> lower, SandboxRecord sandbox)
    {
        var userns = sandbox.PinnedNamespaces.TryGetValue("user", out var file) ? file
            : throw new CrestException(ErrorKind.FailedPrecondition, $"pod sandbox {sandbox.Id} has a user namespace of its own but no pinned namespace file for it; recreate the pod");
        var (uid, gid) = sandbox.Spec.Namespaces.User!.HostRoot();
        linux.Chown(Path.Combine(dir, "upper"), uid, gid);
        linux.Chown(Path.Combine(dir, "work"), uid, gid);
        var result = new List<string>(lower.Count);
        for (var i = 0; i < lower.Count; i++)
        {
            var target = Directory.CreateDirectory(Path.Combine(dir, "idmapped", i.ToString(System.Globalization.CultureInfo.InvariantCulture))).FullName;
            linux.BindIdMapped(lower[i], target, userns);
            result.Add(target);
        }

        return result;
    }

    /// <summary>Detaches every id-mapped layer bind under the container directory and removes their mount points.</summary>
    private void UnmountIdMapped(string dir)
    {
        var idMapped = Path.Combine(dir, "idmapped");
        if (!Directory.Exists(idMapped))
        {
            return;
        }

        foreach (var mount in linux.MountsUnder(idMapped).OrderByDescending(m => m.Length))
        {
            linux.Unmount(mount);
        }

        if (linux.MountsUnder(idMapped).Count == 0)
        {
            Directory.Delete(idMapped, recursive: true);
        }
    }
}
