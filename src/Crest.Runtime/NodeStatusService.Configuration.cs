namespace Crest.Runtime;

/// <summary>The node's configured facts the CRI reports next to the checks (Status, RuntimeConfig).</summary>
public sealed partial class NodeStatusService
{
    /// <summary>The handler an empty CRI runtime_handler selects.</summary>
    public string DefaultHandler => runtime.DefaultHandler;

    /// <summary>The cgroup driver the kubelet must use too (RuntimeConfig).</summary>
    public CgroupDriver CgroupDriver => runtime.CgroupDriver;

    /// <summary>Where containers' root filesystems live; the layers under them are beside it, under the root.</summary>
    public string ContainersDir => paths.Containers;
}
