using Runtime.V1;

namespace Crest.Daemon.Cri;

/// <summary>
/// The metrics ListPodSandboxMetrics reports, named and labelled as cAdvisor names them (the kubelet serves them
/// under those names when it takes container metrics from the runtime). Every metric carries the base labels
/// id, image, namespace, pod and container in that order, as CRI-O sends them; values are unsigned integers
/// (CRI's UInt64Value), so seconds are whole seconds.
/// </summary>
internal static class ContainerMetricDescriptors
{
    public static readonly string[] BaseLabelKeys = ["id", "image", "namespace", "pod", "container"];

    public static readonly MetricDescriptor CpuUsageSecondsTotal = Describe("container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", "cpu");
    public static readonly MetricDescriptor MemoryUsageBytes = Describe("container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was accessed");
    public static readonly MetricDescriptor MemoryWorkingSetBytes = Describe("container_memory_working_set_bytes", "Current working set in bytes.");
    public static readonly MetricDescriptor MemoryRss = Describe("container_memory_rss", "Size of RSS in bytes.");
    public static readonly MetricDescriptor FsUsageBytes = Describe("container_fs_usage_bytes", "Current filesystem usage in bytes.");
    public static readonly MetricDescriptor FsInodesTotal = Describe("container_fs_inodes_total", "Total number of inodes.");
    public static readonly MetricDescriptor NetworkReceiveBytesTotal = Describe("container_network_receive_bytes_total", "Cumulative count of bytes received", "interface");
    public static readonly MetricDescriptor NetworkTransmitBytesTotal = Describe("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", "interface");
    public static readonly MetricDescriptor LastSeen = Describe("container_last_seen", "Last time a container was seen by the exporter");
    public static readonly MetricDescriptor StartTimeSeconds = Describe("container_start_time_seconds", "Start time of the container since unix epoch in seconds.");

    public static IReadOnlyList<MetricDescriptor> All { get; } =
    [
        CpuUsageSecondsTotal, MemoryUsageBytes, MemoryWorkingSetBytes, MemoryRss, FsUsageBytes, FsInodesTotal,
        NetworkReceiveBytesTotal, NetworkTransmitBytesTotal, LastSeen, StartTimeSeconds,
    ];

    private static MetricDescriptor Describe(string name, string help, params string[] extraLabels)
    {
        var d = new MetricDescriptor { Name = name, Help = help };
        d.LabelKeys.Add(BaseLabelKeys);
        d.LabelKeys.Add(extraLabels);
        return d;
    }
}
