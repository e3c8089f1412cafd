using Crest.Core;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// CRI StopContainer: the container's stop signal (SIGTERM unless the image names another), then SIGKILL once <c>timeout</c> seconds have passed.
    /// Idempotent: stopping a stopped or missing container succeeds.
    /// </summary>
    public override async Task<StopContainerResponse> StopContainer(StopContainerRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        try
        {
            await containers.StopAsync(request.ContainerId, TimeSpan.FromSeconds(Math.Max(0, request.Timeout)), context.CancellationToken);
        }
        catch (CrestException e) when (e.Kind == ErrorKind.NotFound)
        {
        }

        return new StopContainerResponse();
    }
}
