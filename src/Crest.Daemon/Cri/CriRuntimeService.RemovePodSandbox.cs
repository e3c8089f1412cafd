using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// CRI RemovePodSandbox: removes the pod and every container in it, running ones included (they are killed first).
    /// Idempotent: removing a pod that is already gone succeeds.
    /// </summary>
    public override async Task<RemovePodSandboxResponse> RemovePodSandbox(RemovePodSandboxRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        await pods.RemoveAsync(request.PodSandboxId, context.CancellationToken);
        return new RemovePodSandboxResponse();
    }
}
