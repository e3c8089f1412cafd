using Crest.Runtime;
using Runtime.V1;

namespace Crest.Daemon.Cri;

/// <summary>
/// The CRI RuntimeService: one partial file per RPC (<c>CriRuntimeService.Status.cs</c> holds Status),
/// each a thin adapter that maps the request to a domain call and the answer back. Every RPC not
/// overridden here answers Unimplemented (the generated base class does that) until its issue lands.
/// </summary>
internal sealed partial class CriRuntimeService(
    NodeStatusService nodeStatus,
    RuntimeOptions runtime,
    SandboxService sandboxes,
    ContainerService containers,
    PodService pods,
    RuntimeLayout runtimeLayout,
    RuntimeEvents events,
    Crest.Checkpoint.CheckpointService checkpoints,
    Crest.Checkpoint.RestoreService restores,
    Streaming.StreamingServer streaming) : RuntimeService.RuntimeServiceBase
{
    /// <summary>The version of the kubelet runtime API this server speaks (the Version RPC's "version" field).</summary>
    public const string KubeletApiVersion = "0.1.0";

    public const string RuntimeName = "crest";

    public const string RuntimeApiVersion = "v1";

    public static string CrestVersion { get; } =
        typeof(CriRuntimeService).Assembly.GetCustomAttributes(typeof(System.Reflection.AssemblyInformationalVersionAttribute), false)
            .OfType<System.Reflection.AssemblyInformationalVersionAttribute>().FirstOrDefault()?.InformationalVersion ?? "0.0.0";
}
