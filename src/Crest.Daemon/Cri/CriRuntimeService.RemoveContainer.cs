using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// CRI RemoveContainer: removes the container, killing it first if it runs, with its rootfs, files and image lease.
    /// Idempotent: removing a container that is already gone succeeds.
    /// </summary>
    public override async Task<RemoveContainerResponse> RemoveContainer(RemoveContainerRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        await containers.RemoveAsync(request.ContainerId, context.CancellationToken);
        return new RemoveContainerResponse();
    }
}
