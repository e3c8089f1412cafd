using Crest.Core;
using Crest.Linux;
using Microsoft.Extensions.Logging;

namespace Crest.Runtime;

/// <summary>
/// Pods with a user namespace of their own (CRI userns_options, mode POD): what a request may ask for, and whether
/// this node can give it. Checked once: the kernel must make user namespaces and id-mapped mounts on the filesystem
/// of crestd's root (where the image layers are), and the pod's mapped root must be able to reach the container
/// root filesystems (runc and crun prepare the rootfs from inside the new user namespace, by path).
/// </summary>
public sealed class UserNamespaces(CrestPaths paths, ILogger<UserNamespaces> logger)
{
    private readonly Lazy<string?> _problem = new(() =>
    {
        var problem = Check(paths);
        if (problem is null)
        {
            RuntimeLog.UserNamespacesAvailable(logger, paths.Root);
        }
        else
        {
            RuntimeLog.UserNamespacesUnavailable(logger, problem);
        }

        return problem;
    });

    /// <summary>Why pods cannot have user namespaces on this node, or null when they can.</summary>
    public string? Problem => _problem.Value;

    public bool Supported => Problem is null;

    private static string? Check(CrestPaths paths)
    {
        Directory.CreateDirectory(paths.Root);
        if (IdMappedMounts.Problem(paths.Root, TimeSpan.FromSeconds(5)) is { } kernel)
        {
            return kernel;
        }

        foreach (var dir in new[] { paths.Containers, Path.Combine(paths.State, "sandboxes") })
        {
            if (IdMappedMounts.FirstUnsearchable(dir) is { } closed)
            {
                return $"{closed} is not searchable by others, so a pod's mapped root cannot reach root filesystems under {dir}; make it at least 0711";
            }
        }

        return null;
    }

    /// <summary>
    /// Checks a pod's user namespace request as the kubelet makes it: NODE with no mappings, or POD with exactly one
    /// uid and one gid mapping that start at container id 0 (the kubelet hands each pod one 64Ki-aligned range).
    /// CONTAINER and TARGET do not exist for user namespaces.
    /// </summary>
    public static void Validate(PodSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var ns = spec.Namespaces;
        if (ns.User is not { } userns)
        {
            return;
        }

        var pod = $"pod {spec.Namespace}/{spec.Name}";
        switch (userns.Mode)
        {
            case NamespaceMode.Node:
                if (userns.Uids.Count > 0 || userns.Gids.Count > 0)
                {
                    throw new CrestException(ErrorKind.InvalidArgument,
                        $"{pod} asks for the node's user namespace (mode NODE) but gives {userns.Uids.Count} uid and {userns.Gids.Count} gid mappings; mappings go only with mode POD");
                }

                return;
            case NamespaceMode.Pod:
                break;
            default:
                throw new CrestException(ErrorKind.InvalidArgument,
                    $"{pod} asks for user namespace mode {userns.Mode.ToString().ToUpperInvariant()}; a user namespace is either the pod's own (POD) or the node's (NODE)");
        }

        CheckMappings(pod, "uid", userns.Uids);
        CheckMappings(pod, "gid", userns.Gids);
        foreach (var (what, mode) in new[] { ("network", ns.Network), ("pid", ns.Pid), ("ipc", ns.Ipc) })
        {
            if (mode == NamespaceMode.Node)
            {
                throw new CrestException(ErrorKind.InvalidArgument,
                    $"{pod} has a user namespace of its own (mode POD) and asks for the node's {what} namespace; a pod in a user namespace cannot share the node's namespaces");
            }
        }
    }

    private static void CheckMappings(string pod, string kind, IReadOnlyList<IdMapping> mappings)
    {
        if (mappings.Count != 1)
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"{pod} gives {mappings.Count} {kind} mappings for its user namespace (mode POD); exactly one is expected, starting at container id 0");
        }

        var m = mappings[0];
        if (m.ContainerId != 0)
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"{pod}'s {kind} mapping starts at container id {m.ContainerId}; it must start at 0, so that the pod has a root");
        }

        if (m.Length == 0 || (ulong)m.HostId + m.Length > uint.MaxValue)
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"{pod}'s {kind} mapping {m.HostId}+{m.Length} is empty or runs past the last host id");
        }
    }
}
