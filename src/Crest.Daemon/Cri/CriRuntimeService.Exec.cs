using Crest.Core;
using Crest.Daemon.Streaming;
using Crest.Runtime;
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

    /// <summary>
    /// containerd answers Exec, Attach and PortForward for a container or pod that is not running with a bare error, which
    /// gRPC reports as Unknown ("container is in CONTAINER_EXITED state"); the kubelet and crictl show only the message.
    /// Crest gives clients the same code; a missing container stays NotFound.
    /// </summary>
    internal static async Task<T> AsContainerdAnswersAsync<T>(Task<T> check)
    {
        try
        {
            return await check;
        }
        catch (CrestException e) when (e.Kind == ErrorKind.FailedPrecondition)
        {
            throw new RpcException(new Status(StatusCode.Unknown, e.Message));
        }
    }

    /// <summary>The stream checks of the kubelet's streaming server: tty excludes stderr, and at least one stream.</summary>
    internal static StreamOptions StreamsOf(bool stdin, bool stdout, bool stderr, bool tty)
    {
        if (tty && stderr)
        {
            // A terminal merges stderr into its one output.
            throw new CrestException(ErrorKind.InvalidArgument, "tty and stderr cannot both be true");
        }

        return stdin || stdout || stderr
            ? new StreamOptions(stdin, stdout, stderr, tty)
            : throw new CrestException(ErrorKind.InvalidArgument, "one of stdin, stdout, or stderr must be set");
    }
}
