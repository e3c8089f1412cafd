using Crest.Cri.Mapping;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>CRI ListPodSandboxStats: the stats of every ready pod, filtered by ID prefix and labels.</summary>
    public override async Task<ListPodSandboxStatsResponse> ListPodSandboxStats(ListPodSandboxStatsRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var f = request.Filter;
        var response = new ListPodSandboxStatsResponse();
        foreach (var s in await sandboxes.ListAsync(context.CancellationToken))
        {
            if (s.State != Crest.Core.SandboxState.Ready || !CriMapping.Matches(s, f?.Id, f?.LabelSelector))
            {
                continue;
            }

            response.Stats.Add(CriStatsMapping.ToCri(await containers.PodStatsAsync(s.Id, context.CancellationToken)));
        }

        return response;
    }
}
