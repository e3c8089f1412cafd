using Crest.Core;
using Crest.Daemon.Streaming;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// PortForward: the pod must be ready; the URL forwards to 127.0.0.1 inside the pod's network namespace. The
    /// ports come from the WebSocket URL's "port" query parameters, as the kubelet's server takes them, or else from here.
    /// </summary>
    public override async Task<PortForwardResponse> PortForward(PortForwardRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var pod = await AsContainerdAnswersAsync(sandboxes.RequireReadyAsync(request.PodSandboxId, context.CancellationToken));
        if (request.Port.FirstOrDefault(p => p is < 1 or > 65535) is var bad and not 0)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"port {bad} is not a TCP port (1-65535)");
        }

        return new PortForwardResponse { Url = streaming.CreateUrl("portforward", new PortForwardStreamRequest(pod.Id, [.. request.Port])) };
    }
}
