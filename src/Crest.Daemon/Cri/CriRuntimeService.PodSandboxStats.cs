using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>CRI PodSandboxStats: the pod's running containers summed, with its network interface counters; NotFound when there is no such pod.</summary>
    public override async Task<PodSandboxStatsResponse> PodSandboxStats(PodSandboxStatsRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        return new PodSandboxStatsResponse { Stats = CriStatsMapping.ToCri(await containers.PodStatsAsync(request.PodSandboxId, context.CancellationToken)) };
    }
}
