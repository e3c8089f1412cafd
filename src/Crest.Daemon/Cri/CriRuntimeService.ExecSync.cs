using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// CRI ExecSync: runs a command in the running container and returns its output and exit code. A <c>timeout</c>
    /// (seconds, 0 for none) that passes kills the command and everything it started.
    /// </summary>
    public override async Task<ExecSyncResponse> ExecSync(ExecSyncRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var r = await containers.ExecSyncAsync(request.ContainerId, [.. request.Cmd], TimeSpan.FromSeconds(Math.Max(0, request.Timeout)), context.CancellationToken);
        return new ExecSyncResponse
        {
            Stdout = Google.Protobuf.ByteString.CopyFrom(r.Stdout),
            Stderr = Google.Protobuf.ByteString.CopyFrom(r.Stderr),
            ExitCode = r.ExitCode,
        };
    }
}
