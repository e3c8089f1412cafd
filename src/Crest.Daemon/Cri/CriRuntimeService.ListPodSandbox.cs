using Crest.Cri.Mapping;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>CRI ListPodSandbox: every pod, filtered by ID prefix, state and labels when the filter sets them.</summary>
    public override async Task<ListPodSandboxResponse> ListPodSandbox(ListPodSandboxRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var f = request.Filter;
        var response = new ListPodSandboxResponse();
        foreach (var s in await sandboxes.ListAsync(context.CancellationToken))
        {
            if (!CriMapping.Matches(s, f?.Id, f?.LabelSelector) || (f?.State is not null && f.State.State != CriMapping.ToCri(s.State)))
            {
                continue;
            }

            var item = new PodSandbox
            {
                Id = s.Id,
                Metadata = CriMapping.Metadata(s.Spec),
                State = CriMapping.ToCri(s.State),
                CreatedAt = CriMapping.Nanos(s.CreatedAt),
                RuntimeHandler = s.RuntimeHandler,
            };
            item.Labels.Add(s.Spec.Labels.ToDictionary());
            item.Annotations.Add(s.Spec.Annotations.ToDictionary());
            response.Items.Add(item);
        }

        return response;
    }
}
