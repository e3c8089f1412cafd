using Crest.Core;
using Crest.Cri.Mapping;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// cAdvisor-style metrics of every ready pod and its running containers (the kubelet's CRI-sourced container
    /// metrics), from the same cgroup, overlay and network readings as ContainerStats and PodSandboxStats. A pod's own
    /// series carry its id, namespace and name with container "POD"; a container's its id, image and name, the kubelet
    /// adds the pod's.
    /// </summary>
    public override async Task<ListPodSandboxMetricsResponse> ListPodSandboxMetrics(ListPodSandboxMetricsRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var response = new ListPodSandboxMetricsResponse();
        foreach (var sandbox in await sandboxes.ListAsync(context.CancellationToken))
        {
            if (sandbox.State != SandboxState.Ready)
            {
                continue;
            }

            Crest.Runtime.ContainerService.PodUsage usage;
            try
            {
                usage = await containers.PodStatsAsync(sandbox.Id, context.CancellationToken);
            }
            catch (CrestException e) when (e.Kind == ErrorKind.NotFound)
            {
                continue; // removed meanwhile
            }

            response.PodMetrics.Add(ToMetrics(usage));
        }

        return response;
    }

    private static PodSandboxMetrics ToMetrics(Crest.Runtime.ContainerService.PodUsage u)
    {
        var at = CriMapping.Nanos(u.Time);
        var pod = new PodSandboxMetrics { PodSandboxId = u.Sandbox.Id };
        string[] podLabels = [u.Sandbox.Id, "", u.Sandbox.Spec.Namespace, u.Sandbox.Spec.Name, "POD"];
        pod.Metrics.Add(Sample(ContainerMetricDescriptors.CpuUsageSecondsTotal, at, u.CpuNanoseconds / 1_000_000_000, MetricType.Counter, podLabels, "total"));
        pod.Metrics.Add(Sample(ContainerMetricDescriptors.MemoryWorkingSetBytes, at, u.WorkingSetBytes, MetricType.Gauge, podLabels));
        pod.Metrics.Add(Sample(ContainerMetricDescriptors.MemoryUsageBytes, at, u.UsageBytes, MetricType.Gauge, podLabels));
        if (u.Network is { } n)
        {
            pod.Metrics.Add(Sample(ContainerMetricDescriptors.NetworkReceiveBytesTotal, at, n.Rx, MetricType.Counter, podLabels, Crest.Runtime.CniNetwork.InterfaceName));
            pod.Metrics.Add(Sample(ContainerMetricDescriptors.NetworkTransmitBytesTotal, at, n.Tx, MetricType.Counter, podLabels, Crest.Runtime.CniNetwork.InterfaceName));
        }

        foreach (var c in u.Containers)
        {
            var record = c.Container;
            var metrics = new ContainerMetrics { ContainerId = record.Id };
            string[] labels = [record.Id, record.Spec.UserSpecifiedImage ?? record.Spec.Image, "", "", record.Spec.Name];
            if (c.Cgroup is { } g)
            {
                metrics.Metrics.Add(Sample(ContainerMetricDescriptors.CpuUsageSecondsTotal, at, g.CpuUsageNanoseconds / 1_000_000_000, MetricType.Counter, labels, "total"));
                metrics.Metrics.Add(Sample(ContainerMetricDescriptors.MemoryUsageBytes, at, g.MemoryUsageBytes, MetricType.Gauge, labels));
                metrics.Metrics.Add(Sample(ContainerMetricDescriptors.MemoryWorkingSetBytes, at, g.MemoryWorkingSetBytes, MetricType.Gauge, labels));
                metrics.Metrics.Add(Sample(ContainerMetricDescriptors.MemoryRss, at, g.MemoryRssBytes, MetricType.Gauge, labels));
            }

            metrics.Metrics.Add(Sample(ContainerMetricDescriptors.FsUsageBytes, at, (ulong)Math.Max(0, c.WritableBytes), MetricType.Gauge, labels));
            metrics.Metrics.Add(Sample(ContainerMetricDescriptors.FsInodesTotal, at, (ulong)Math.Max(0, c.WritableInodes), MetricType.Gauge, labels));
            metrics.Metrics.Add(Sample(ContainerMetricDescriptors.LastSeen, at, (ulong)u.Time.ToUnixTimeSeconds(), MetricType.Gauge, labels));
            if (record.StartedAt is { } started)
            {
                metrics.Metrics.Add(Sample(ContainerMetricDescriptors.StartTimeSeconds, at, (ulong)started.ToUnixTimeSeconds(), MetricType.Gauge, labels));
            }

            pod.ContainerMetrics.Add(metrics);
        }

        return pod;
    }

    private static Metric Sample(MetricDescriptor descriptor, long timestamp, ulong value, MetricType type, string[] labels, params string[] extraLabels)
    {
        var m = new Metric { Name = descriptor.Name, Timestamp = timestamp, MetricType = type, Value = new UInt64Value { Value = value } };
        m.LabelValues.Add(labels);
        m.LabelValues.Add(extraLabels);
        return m;
    }
}
