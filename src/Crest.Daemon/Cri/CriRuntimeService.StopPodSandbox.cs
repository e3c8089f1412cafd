using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// CRI StopPodSandbox: kills the pod's containers and its infra process and releases its network. Idempotent: the
    /// kubelet calls it more than once, and stopping a stopped or missing pod succeeds.
    /// </summary>
    public override async Task<StopPodSandboxResponse> StopPodSandbox(StopPodSandboxRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        await pods.StopAsync(request.PodSandboxId, context.CancellationToken);
        return new StopPodSandboxResponse();
    }
}
