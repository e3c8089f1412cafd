using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>CRI ContainerStats: CPU and memory from the container's cgroup (when it runs) and its writable layer's use; NotFound when there is no such container.</summary>
    public override async Task<ContainerStatsResponse> ContainerStats(ContainerStatsRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        return new ContainerStatsResponse { Stats = CriStatsMapping.ToCri(await containers.StatsAsync(request.ContainerId, context.CancellationToken)) };
    }
}
