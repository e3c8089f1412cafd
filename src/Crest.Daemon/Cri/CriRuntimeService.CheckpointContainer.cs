using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// CRI CheckpointContainer: writes a checkpoint archive of a running container to <c>location</c> and leaves it
    /// running. <c>timeout</c> (seconds) bounds the whole operation; below the configured default (0 included) it is
    /// raised to that default, as the kubelet does.
    /// </summary>
    public override async Task<CheckpointContainerResponse> CheckpointContainer(CheckpointContainerRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        await checkpoints.Containers.CheckpointAsync(request.ContainerId, request.Location, TimeSpan.FromSeconds(Math.Max(0, request.Timeout)), context.CancellationToken);
        return new CheckpointContainerResponse();
    }
}
