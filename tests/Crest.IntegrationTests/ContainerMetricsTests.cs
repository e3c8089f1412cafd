using Runtime.V1;

using static Crest.IntegrationTests.PodTests;

namespace Crest.IntegrationTests;

/// <summary>The kubelet's CRI-sourced container metrics: descriptors first, then values that agree with ContainerStats.</summary>
public class ContainerMetricsTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Pod_sandbox_metrics_use_cadvisor_names_and_labels_and_agree_with_container_stats()
    {
        await using var d = await StartWithImageAsync();
        var pod = Pod(d, "metered");
        // A fixed writable-layer footprint and an idle process: the readings barely move between the two calls.
        var (podId, id) = await RunAsync(d, pod, Container("metered", "/bin/busybox dd if=/dev/zero of=/tmp/blob bs=65536 count=16 2>/dev/null", "touch /tmp/ready", "sleep 600"));
        await WaitForAsync(d, id, "test -f /tmp/ready");

        var descriptors = (await d.Runtime.ListMetricDescriptorsAsync(new ListMetricDescriptorsRequest(), cancellationToken: Ct)).Descriptors;
        var metrics = (await d.Runtime.ListPodSandboxMetricsAsync(new ListPodSandboxMetricsRequest(), cancellationToken: Ct)).PodMetrics;
        var stats = (await d.Runtime.ContainerStatsAsync(new ContainerStatsRequest { ContainerId = id }, cancellationToken: Ct)).Stats;

        var workingSet = descriptors.Single(x => x.Name == "container_memory_working_set_bytes");
        Assert.Equal(["id", "image", "namespace", "pod", "container"], workingSet.LabelKeys);
        Assert.Equal(["id", "image", "namespace", "pod", "container", "cpu"], descriptors.Single(x => x.Name == "container_cpu_usage_seconds_total").LabelKeys);
        var podMetrics = Assert.Single(metrics, m => m.PodSandboxId == podId);
        var container = Assert.Single(podMetrics.ContainerMetrics, c => c.ContainerId == id);
        ulong Value(string name) => container.Metrics.Single(m => m.Name == name).Value.Value;

        Assert.Equal([id, PodTests.Image, "", "", "metered"], container.Metrics.Single(m => m.Name == "container_fs_usage_bytes").LabelValues);
        Assert.Equal(stats.WritableLayer.UsedBytes.Value, Value("container_fs_usage_bytes"));
        Assert.True(Value("container_fs_usage_bytes") >= 1 << 20, "the 1 MiB the container wrote is not in its filesystem usage");
        Assert.Equal(stats.Cpu.UsageCoreNanoSeconds.Value / 1_000_000_000, Value("container_cpu_usage_seconds_total"));
        // The working set counts the page cache of the 1 MiB file as long as the kernel keeps it on the active list; it may
        // move it to the inactive one between the two readings (seen once: 667,648 bytes, then about 290,000).
        const ulong PageCacheMoves = (1 << 20) + 65536;
        var workingSetBytes = stats.Memory.WorkingSetBytes.Value;
        Assert.InRange(Value("container_memory_working_set_bytes"), workingSetBytes * 9 / 10 - Math.Min(workingSetBytes * 9 / 10, PageCacheMoves), workingSetBytes * 11 / 10 + PageCacheMoves);
        Assert.InRange(Value("container_memory_rss"), 1UL, stats.Memory.UsageBytes.Value + 65536);
        Assert.Contains(podMetrics.Metrics, m => m.Name == "container_network_receive_bytes_total" && m.LabelValues.SequenceEqual([podId, "", "test", "metered", "POD", "eth0"]));
        Assert.All(container.Metrics.Concat(podMetrics.Metrics), m => Assert.Equal(
            descriptors.Single(x => x.Name == m.Name).LabelKeys.Count, m.LabelValues.Count));
    }

    private static async Task WaitForAsync(DaemonHarness d, string id, string condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (true)
        {
            var r = await d.Runtime.ExecSyncAsync(new ExecSyncRequest { ContainerId = id, Cmd = { "/bin/sh", "-c", condition }, Timeout = 10 }, cancellationToken: Ct);
            if (r.ExitCode == 0)
            {
                return;
            }

            Assert.True(DateTime.UtcNow < deadline, $"timed out waiting for {condition} in {id}");
            await Task.Delay(100, Ct);
        }
    }
}
