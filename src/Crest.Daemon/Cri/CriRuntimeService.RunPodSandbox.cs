using Crest.Cri.Mapping;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// CRI RunPodSandbox: creates and starts a pod (network namespace, CNI, pod files, infra process) for the
    /// runtime handler asked for; on success the pod is READY, on failure every step already taken is undone.
    /// </summary>
    public override async Task<RunPodSandboxResponse> RunPodSandbox(RunPodSandboxRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var sandbox = await sandboxes.RunAsync(CriMapping.ToDomain(request.Config ?? new PodSandboxConfig(), request.RuntimeHandler), context.CancellationToken);
        return new RunPodSandboxResponse { PodSandboxId = sandbox.Id };
    }
}
