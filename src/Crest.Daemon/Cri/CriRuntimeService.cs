using Crest.Runtime;
using Runtime.V1;

namespace Crest.Daemon.Cri;

/// <summary>
/// The CRI RuntimeService: one partial file per RPC, named after it (<c>CriRuntimeService.StopContainer.cs</c> holds
/// StopContainer), each a thin adapter that maps the request to one domain call and the answer back, with the RPC's CRI
/// semantics in its doc comment. Every RPC not overridden answers Unimplemented (the generated base class does that).
/// </summary>
internal sealed partial class CriRuntimeService(
    NodeStatusService nodeStatus,
    SandboxService sandboxes,
    ContainerService containers,
    PodService pods,
    RuntimeEvents events,
    Crest.Checkpoint.CheckpointServices checkpoints,
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
