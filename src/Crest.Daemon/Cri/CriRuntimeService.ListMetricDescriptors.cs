using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// The metrics ListPodSandboxMetrics will report, with their label keys: the kubelet asks once and builds its
    /// Prometheus descriptors from the answer.
    /// </summary>
    public override Task<ListMetricDescriptorsResponse> ListMetricDescriptors(ListMetricDescriptorsRequest request, ServerCallContext context)
    {
        var response = new ListMetricDescriptorsResponse();
        response.Descriptors.Add(ContainerMetricDescriptors.All);
        return Task.FromResult(response);
    }
}
