using Crest.Cri.Mapping;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>CRI ListContainerStats: the stats of every running container, filtered by ID prefix, pod ID prefix and labels.</summary>
    public override async Task<ListContainerStatsResponse> ListContainerStats(ListContainerStatsRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var f = request.Filter;
        var response = new ListContainerStatsResponse();
        foreach (var c in await containers.ListAsync(context.CancellationToken))
        {
            if (c.State != Crest.Core.ContainerState.Running || !CriMapping.Matches(c, f?.Id, f?.PodSandboxId, f?.LabelSelector))
            {
                continue;
            }

            response.Stats.Add(CriStatsMapping.ToCri(await containers.StatsAsync(c.Id, context.CancellationToken)));
        }

        return response;
    }
}
