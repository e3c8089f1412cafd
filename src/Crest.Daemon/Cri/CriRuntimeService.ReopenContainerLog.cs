using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// CRI ReopenContainerLog: asks conmon to reopen the log file after the kubelet rotated it. A container that is not
    /// running gets FailedPrecondition, and no new log file is created (the CRI allows either answer, not both).
    /// </summary>
    public override async Task<ReopenContainerLogResponse> ReopenContainerLog(ReopenContainerLogRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        await containers.ReopenLogAsync(request.ContainerId, context.CancellationToken);
        return new ReopenContainerLogResponse();
    }
}
