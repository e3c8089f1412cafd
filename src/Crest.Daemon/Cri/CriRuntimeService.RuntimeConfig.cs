using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    public override Task<RuntimeConfigResponse> RuntimeConfig(RuntimeConfigRequest request, ServerCallContext context) =>
        Task.FromResult(new RuntimeConfigResponse
        {
            Linux = new LinuxRuntimeConfiguration
            {
                CgroupDriver = runtime.CgroupDriver == Crest.Runtime.CgroupDriver.Systemd
                    ? global::Runtime.V1.CgroupDriver.Systemd
                    : global::Runtime.V1.CgroupDriver.Cgroupfs,
            },
        });
}
