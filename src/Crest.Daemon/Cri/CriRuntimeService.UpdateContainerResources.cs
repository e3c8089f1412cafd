using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// CRI UpdateContainerResources: applies the Linux resources (CPU, memory, cpuset) to a created or running container through
    /// the OCI runtime and records them; if the runtime refuses, the error is returned and the record is unchanged.
    /// </summary>
    public override async Task<UpdateContainerResourcesResponse> UpdateContainerResources(UpdateContainerResourcesRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var r = request.Linux ?? throw new RpcException(new Status(StatusCode.InvalidArgument, "UpdateContainerResources needs linux resources"));
        await containers.UpdateResourcesAsync(request.ContainerId,
            new Crest.Core.ResourceSpec(r.CpuPeriod, r.CpuQuota, r.CpuShares, r.MemoryLimitInBytes, r.CpusetCpus, r.CpusetMems), context.CancellationToken);
        return new UpdateContainerResourcesResponse();
    }
}
