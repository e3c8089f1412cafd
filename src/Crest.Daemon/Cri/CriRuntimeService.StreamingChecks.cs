using Crest.Core;
using Crest.Runtime;
using Grpc.Core;

namespace Crest.Daemon.Cri;

// The checks Exec, Attach and PortForward share before they hand out a streaming URL.
internal sealed partial class CriRuntimeService
{
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
