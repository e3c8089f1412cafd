using Crest.Cri.Mapping;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// CRI GetContainerEvents: a stream of container lifecycle events (created, started, stopped, deleted) from the moment
    /// of the call, each with its pod's status while the pod exists; it ends when the client leaves.
    /// </summary>
    public override async Task GetContainerEvents(GetEventsRequest request, IServerStreamWriter<ContainerEventResponse> responseStream, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(responseStream);
        ArgumentNullException.ThrowIfNull(context);
        await foreach (var e in events.SubscribeAsync(context.CancellationToken))
        {
            var response = new ContainerEventResponse
            {
                ContainerId = e.ContainerId,
                ContainerEventType = e.Kind switch
                {
                    Crest.Runtime.LifecycleEvent.Created => ContainerEventType.ContainerCreatedEvent,
                    Crest.Runtime.LifecycleEvent.Started => ContainerEventType.ContainerStartedEvent,
                    Crest.Runtime.LifecycleEvent.Stopped => ContainerEventType.ContainerStoppedEvent,
                    _ => ContainerEventType.ContainerDeletedEvent,
                },
                CreatedAt = CriMapping.Nanos(e.At),
            };
            if (await sandboxes.FindAsync(e.SandboxId, context.CancellationToken) is { } s)
            {
                response.PodSandboxStatus = new PodSandboxStatus
                {
                    Id = s.Id,
                    Metadata = CriMapping.Metadata(s.Spec),
                    State = CriMapping.ToCri(s.State),
                    CreatedAt = CriMapping.Nanos(s.CreatedAt),
                };
            }

            await responseStream.WriteAsync(response, context.CancellationToken);
        }
    }
}
