using Crest.Checkpoint;
using Crest.Cri.Mapping;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// KEP-5823 RestorePod: a new pod sandbox from <c>config</c> (a new IP from CNI) and one container per checkpointed
    /// container, each restored with the <c>container_configs</c> entry of the same metadata name and left CREATED for
    /// the caller to start. The checkpoint is never modified; restoring it twice makes two independent pods. A config
    /// that names no checkpointed container, a checkpointed container without a config, or an unknown option key is
    /// InvalidArgument; a failure removes everything the call made.
    /// </summary>
    public override async Task<RestorePodResponse> RestorePod(RestorePodRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var result = await checkpoints.PodRestores.RestoreAsync(new PodRestoreRequest
        {
            CheckpointPath = request.CheckpointPath,
            Pod = CriMapping.ToDomain(request.Config ?? new PodSandboxConfig(), request.RuntimeHandler),
            Options = request.Options,
            Containers = request.ContainerConfigs.Select(CriMapping.ToDomain).ToList(),
        }, context.CancellationToken);
        var response = new RestorePodResponse { PodSandboxId = result.Sandbox.Id };
        response.RestoredContainers.AddRange(result.Containers.Select(c => new RestoredContainer { Name = c.Name, ContainerId = c.ContainerId }));
        return response;
    }
}
