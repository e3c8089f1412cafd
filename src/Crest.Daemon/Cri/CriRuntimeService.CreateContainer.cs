using Crest.Cri.Mapping;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// CRI CreateContainer: creates a container in the pod, in state CREATED, without starting it. When the image names a
    /// checkpoint (an archive path or a checkpoint image) the container is a restore of it, started by StartContainer; a
    /// checkpoint never falls through to a normal create.
    /// </summary>
    public override async Task<CreateContainerResponse> CreateContainer(CreateContainerRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var spec = CriMapping.ToDomain(request.Config ?? new ContainerConfig());
        var c = await checkpoints.Restores.DetectAsync(spec.Image, context.CancellationToken) is { } checkpoint
            ? await checkpoints.Restores.CreateAsync(request.PodSandboxId, spec, checkpoint, context.CancellationToken)
            : await containers.CreateAsync(request.PodSandboxId, spec, context.CancellationToken);
        return new CreateContainerResponse { ContainerId = c.Id };
    }
}
