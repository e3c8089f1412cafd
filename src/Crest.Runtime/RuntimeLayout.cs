using Crest.Core;

namespace Crest.Runtime;

/// <summary>Where the runtime layer keeps per-pod and per-container files, under crestd's roots.</summary>
public sealed class RuntimeLayout(CrestPaths paths)
{
    /// <summary>Where every pod sandbox's directory is.</summary>
    public string SandboxesDir => Path.Combine(paths.State, "sandboxes");

    public string SandboxDir(string id) => Path.Combine(SandboxesDir, id);

    public string NetnsFile(string id) => Path.Combine(paths.State, "netns", id);

    public string ContainerDir(string id) => Path.Combine(paths.Containers, id);

    public string ContainerStateDir(string id) => Path.Combine(paths.State, "containers", id);

    /// <summary>Every path of one pod sandbox.</summary>
    public SandboxBundle Sandbox(string id) => new(id, SandboxDir(id), NetnsFile(id), Path.Combine(ExitDir, id));

    /// <summary>Every path of one container, on the root and the state filesystems.</summary>
    public ContainerBundle Container(string id) =>
        new(id, ContainerDir(id), ContainerStateDir(id), Path.Combine(ExitDir, id), Path.Combine(SocketDir, id));

    /// <summary>runc's/crun's --root for a handler: Crest's own, never the host's default.</summary>
    public string RuntimeRoot(string handler) => Path.Combine(paths.State, "runtime", handler);

    public string ExitDir => Path.Combine(paths.State, "exits");

    public string SocketDir => Path.Combine(paths.State, "attach");
}

/// <summary>
/// The paths of one pod sandbox, named once: <see cref="Dir"/> on the state filesystem holds the infra's bundle and
/// empty rootfs, the pod's /dev/shm, the files containers bind in (hostname, hosts, resolv.conf), the pinned
/// namespaces and conmon's pid files; the network namespace file and conmon's exit file live beside it.
/// </summary>
public sealed record SandboxBundle(string Id, string Dir, string NetnsFile, string ExitFile)
{
    /// <summary>The infra's rootfs: an empty directory (catatonit is bound in from the host).</summary>
    public string Rootfs => Path.Combine(Dir, "rootfs");

    /// <summary>The pod's /dev/shm (a tmpfs shared by its containers).</summary>
    public string Shm => Path.Combine(Dir, "shm");

    public string BundleDir => Path.Combine(Dir, "bundle");

    public string ConfigJson => Path.Combine(BundleDir, "config.json");

    public string HostnameFile => Path.Combine(Dir, "hostname");

    public string HostsFile => Path.Combine(Dir, "hosts");

    public string ResolvConfFile => Path.Combine(Dir, "resolv.conf");

    /// <summary>Where the infra's namespaces are pinned, one bind-mounted file each.</summary>
    public string NamespacesDir => Path.Combine(Dir, "ns");

    /// <summary>Where the infra's namespace of <paramref name="type"/> (ipc, uts, pid, user) is pinned.</summary>
    public string PinnedNamespace(string type) => Path.Combine(NamespacesDir, type);

    public string InfraPidFile => Path.Combine(Dir, "infra.pid");

    public string ConmonPidFile => Path.Combine(Dir, "conmon.pid");

    public string PersistDir => Path.Combine(Dir, "persist");
}

/// <summary>
/// The paths of one container, named once: <see cref="Dir"/> on Crest's root (rootfs, overlay upper and work, the OCI
/// bundle, a checkpoint waiting to be restored) and <see cref="StateDir"/> on the state filesystem (conmon's pid files
/// and persist dir), plus conmon's exit file and attach directory.
/// </summary>
public sealed record ContainerBundle(string Id, string Dir, string StateDir, string ExitFile, string AttachDir)
{
    /// <summary>The overlay mount the container runs in.</summary>
    public string Rootfs => Path.Combine(Dir, "rootfs");

    /// <summary>The overlay's writable layer: what the container changed (the rootfs diff of a checkpoint).</summary>
    public string Upper => Path.Combine(Dir, "upper");

    public string Work => Path.Combine(Dir, "work");

    /// <summary>The lower directory of an image without layers.</summary>
    public string Empty => Path.Combine(Dir, "empty");

    /// <summary>Where image layers are bound id-mapped while the overlay of a user-namespaced pod's container is built.</summary>
    public string IdMapped => Path.Combine(Dir, "idmapped");

    /// <summary>The OCI bundle directory (conmon's -b): config.json, conmon's ctl FIFO and attach socket, restore.log.</summary>
    public string BundleDir => Path.Combine(Dir, "bundle");

    public string ConfigJson => Path.Combine(BundleDir, "config.json");

    /// <summary>conmon's control FIFO: "1 H W" resizes the terminal, "2 0 0" reopens the log.</summary>
    public string ControlFifo => Path.Combine(BundleDir, "ctl");

    /// <summary>CRIU's log of a restore (the work path is the bundle).</summary>
    public string RestoreLog => Path.Combine(BundleDir, "restore.log");

    /// <summary>
    /// The CRIU configuration file the container's <c>org.criu.config</c> annotation names (<see cref="CriuConfigFile"/>).
    /// runc and crun hand it to CRIU on every call for the container, so it exists only while the CRIU run it was
    /// written for runs: CRIU skips a configuration file that is not there.
    /// </summary>
    public string CriuConfig => Path.Combine(Dir, "criu.conf");

    /// <summary>The private directory a checkpoint is kept in between CreateContainer and StartContainer.</summary>
    public string RestoreDir => Path.Combine(Dir, "restore");

    /// <summary>The CRIU images of the checkpoint to restore.</summary>
    public string RestoreImages => Path.Combine(RestoreDir, "checkpoint");

    public string PidFile => Path.Combine(StateDir, "pid");

    public string ConmonPidFile => Path.Combine(StateDir, "conmon.pid");

    public string PersistDir => Path.Combine(StateDir, "persist");

    /// <summary>conmon leaves this marker when the kernel OOM-killed the container.</summary>
    public string OomMarker => Path.Combine(PersistDir, "oom");
}
