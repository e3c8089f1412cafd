using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// CRI StartContainer: starts a CREATED container. A restored container is started by CRIU from its checkpoint; a
    /// restore that fails leaves the container EXITED with reason StartError and CRIU's log in its message.
    /// </summary>
    public override async Task<StartContainerResponse> StartContainer(StartContainerRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        await containers.StartAsync(request.ContainerId, context.CancellationToken);
        return new StartContainerResponse();
    }
}
