using Crest.Core;

namespace Crest.Runtime;

/// <summary>Where the runtime layer keeps per-pod and per-container files, under crestd's roots.</summary>
public sealed class RuntimeLayout(CrestPaths paths)
{
    public string SandboxDir(string id) => Path.Combine(paths.State, "sandboxes", id);

    public string NetnsFile(string id) => Path.Combine(paths.State, "netns", id);

    public string ContainerDir(string id) => Path.Combine(paths.Containers, id);

    public string ContainerStateDir(string id) => Path.Combine(paths.State, "containers", id);

    /// <summary>runc's/crun's --root for a handler: Crest's own, never the host's default.</summary>
    public string RuntimeRoot(string handler) => Path.Combine(paths.State, "runtime", handler);

    public string ExitDir => Path.Combine(paths.State, "exits");

    public string SocketDir => Path.Combine(paths.State, "attach");
}
