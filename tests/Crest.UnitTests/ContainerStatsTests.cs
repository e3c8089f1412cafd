using Crest.Core;
using Crest.Linux;
using Crest.Runtime;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>ContainerStats and PodSandboxStats from the cgroup and interface counters ILinux reads.</summary>
public sealed class ContainerStatsTests : IDisposable
{
    private readonly RuntimeHarness _h = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_pod_sums_its_running_containers_and_its_infra_and_reports_eth0()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        await _h.RecordRunningAsync("c1", pod.Id, Ct);
        await _h.Store.PutContainerAsync(RuntimeStoreConformance.Container("c2", pod.Id, ContainerState.Exited), Ct);
        _h.Linux.Cgroups[$"{pod.CgroupsPath}/crest-c1"] = new CgroupUsage(1_000, 300, 200, 100);
        _h.Linux.Cgroups[$"{pod.CgroupsPath}/crest-c2"] = new CgroupUsage(9_000, 9_000, 9_000, 9_000);
        _h.Linux.Cgroups[$"{pod.CgroupsPath}/crest-{pod.Id}"] = new CgroupUsage(10, 30, 20, 10);
        _h.Linux.Interfaces[(pod.InfraPid, CniNetwork.InterfaceName)] = (5000, 3000);

        var usage = await _h.Containers.PodStatsAsync(pod.Id, Ct);

        Assert.Equal("c1", Assert.Single(usage.Containers).Container.Id);
        Assert.Equal((1_010UL, 220UL, 330UL), (usage.CpuNanoseconds, usage.WorkingSetBytes, usage.UsageBytes));
        Assert.Equal((5000UL, 3000UL), usage.Network);
    }

    [Fact]
    public async Task A_container_that_is_not_running_has_no_cgroup_counters()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        await _h.Store.PutContainerAsync(RuntimeStoreConformance.Container("c1", pod.Id, ContainerState.Exited), Ct);
        _h.Linux.Cgroups[$"{pod.CgroupsPath}/crest-c1"] = new CgroupUsage(1, 1, 1, 1);

        var usage = await _h.Containers.StatsAsync("c1", Ct);

        Assert.Null(usage.Cgroup);
        Assert.Equal(_h.Layout.Container("c1").Upper, usage.WritableLayerPath);
    }

    public void Dispose() => _h.Dispose();
}
