using Crest.Core;
using Crest.Daemon.Streaming;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// Exec: checks that the container runs (as containerd does, before anything else), then the streams asked for,
    /// and answers a single-use URL on the streaming server, which runs the command when the client connects.
    /// </summary>
    public override async Task<ExecResponse> Exec(ExecRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var c = await AsContainerdAnswersAsync(containers.RequireRunningAsync(request.ContainerId, context.CancellationToken));
        var streams = StreamsOf(request.Stdin, request.Stdout, request.Stderr, request.Tty);
        if (request.Cmd.Count == 0)
        {
            throw new CrestException(ErrorKind.InvalidArgument, "Exec needs a command (cmd is empty)");
        }

        return new ExecResponse { Url = streaming.CreateUrl("exec", new ExecStreamRequest(c.Id, [.. request.Cmd], streams)) };
    }
}
