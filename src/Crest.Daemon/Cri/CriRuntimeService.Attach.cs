using Crest.Daemon.Streaming;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>Attach: the container must run; the URL attaches to its main process through conmon.</summary>
    public override async Task<AttachResponse> Attach(AttachRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var c = await AsContainerdAnswersAsync(containers.RequireRunningAsync(request.ContainerId, context.CancellationToken));
        var streams = StreamsOf(request.Stdin, request.Stdout, request.Stderr, request.Tty);
        return new AttachResponse { Url = streaming.CreateUrl("attach", new AttachStreamRequest(c.Id, streams)) };
    }
}
