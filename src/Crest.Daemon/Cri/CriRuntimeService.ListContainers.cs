using Crest.Cri.Mapping;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>CRI ListContainers: every container, filtered by ID prefix, pod ID prefix, state and labels when the filter sets them.</summary>
    public override async Task<ListContainersResponse> ListContainers(ListContainersRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var f = request.Filter;
        var response = new ListContainersResponse();
        foreach (var c in await containers.ListAsync(context.CancellationToken))
        {
            if (!CriMapping.Matches(c, f?.Id, f?.PodSandboxId, f?.LabelSelector) || (f?.State is not null && f.State.State != CriMapping.ToCri(c.State)))
            {
                continue;
            }

            var item = new Container
            {
                Id = c.Id,
                PodSandboxId = c.SandboxId,
                Metadata = CriMapping.Metadata(c.Spec),
                Image = new ImageSpec { Image = c.Spec.Image },
                ImageRef = c.ImageRef,
                ImageId = c.ImageId,
                State = CriMapping.ToCri(c.State),
                CreatedAt = CriMapping.Nanos(c.CreatedAt),
            };
            item.Labels.Add(c.Spec.Labels.ToDictionary());
            item.Annotations.Add(c.Spec.Annotations.ToDictionary());
            response.Containers.Add(item);
        }

        return response;
    }
}
