using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>CRI Version: the kubelet API version spoken, and the runtime's name, version and CRI API version.</summary>
    public override Task<VersionResponse> Version(VersionRequest request, ServerCallContext context) =>
        Task.FromResult(new VersionResponse
        {
            Version = KubeletApiVersion,
            RuntimeName = RuntimeName,
            RuntimeVersion = CrestVersion,
            RuntimeApiVersion = RuntimeApiVersion,
        });
}
