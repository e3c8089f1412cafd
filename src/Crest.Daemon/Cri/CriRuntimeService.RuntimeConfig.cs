using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>CRI RuntimeConfig: the cgroup driver crestd uses, which the kubelet must match.</summary>
    public override Task<RuntimeConfigResponse> RuntimeConfig(RuntimeConfigRequest request, ServerCallContext context) =>
        Task.FromResult(new RuntimeConfigResponse
        {
            Linux = new LinuxRuntimeConfiguration
            {
                CgroupDriver = nodeStatus.CgroupDriver == Crest.Runtime.CgroupDriver.Systemd
                    ? global::Runtime.V1.CgroupDriver.Systemd
                    : global::Runtime.V1.CgroupDriver.Cgroupfs,
            },
        });
}
