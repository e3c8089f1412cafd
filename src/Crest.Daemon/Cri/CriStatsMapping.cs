using Crest.Cri.Mapping;
using Crest.Runtime;
using Runtime.V1;

namespace Crest.Daemon.Cri;

/// <summary>The runtime's resource use as the CRI stats messages carry it (ContainerStats, PodSandboxStats and their lists).</summary>
internal static class CriStatsMapping
{
    public static PodSandboxStats ToCri(ContainerService.PodUsage u)
    {
        var at = CriMapping.Nanos(u.Time);
        var stats = new PodSandboxStats
        {
            Attributes = new PodSandboxAttributes { Id = u.Sandbox.Id, Metadata = CriMapping.Metadata(u.Sandbox.Spec) },
            Linux = new LinuxPodSandboxStats
            {
                Cpu = new CpuUsage { Timestamp = at, UsageCoreNanoSeconds = new UInt64Value { Value = u.CpuNanoseconds } },
                Memory = new MemoryUsage { Timestamp = at, WorkingSetBytes = new UInt64Value { Value = u.WorkingSetBytes }, UsageBytes = new UInt64Value { Value = u.UsageBytes } },
            },
        };
        stats.Attributes.Labels.Add(u.Sandbox.Spec.Labels.ToDictionary());
        stats.Attributes.Annotations.Add(u.Sandbox.Spec.Annotations.ToDictionary());
        if (u.Network is { } n)
        {
            stats.Linux.Network = new NetworkUsage
            {
                Timestamp = at,
                DefaultInterface = new NetworkInterfaceUsage { Name = CniNetwork.InterfaceName, RxBytes = new UInt64Value { Value = n.Rx }, TxBytes = new UInt64Value { Value = n.Tx } },
            };
        }

        stats.Linux.Containers.Add(u.Containers.Select(ToCri));
        return stats;
    }

    public static ContainerStats ToCri(ContainerService.ContainerUsage u)
    {
        var at = CriMapping.Nanos(u.Time);
        var stats = new ContainerStats
        {
            Attributes = new ContainerAttributes { Id = u.Container.Id, Metadata = CriMapping.Metadata(u.Container.Spec) },
            WritableLayer = new FilesystemUsage
            {
                Timestamp = at,
                FsId = new FilesystemIdentifier { Mountpoint = u.WritableLayerPath },
                UsedBytes = new UInt64Value { Value = (ulong)u.WritableBytes },
                InodesUsed = new UInt64Value { Value = (ulong)u.WritableInodes },
            },
        };
        stats.Attributes.Labels.Add(u.Container.Spec.Labels.ToDictionary());
        stats.Attributes.Annotations.Add(u.Container.Spec.Annotations.ToDictionary());
        if (u.Cgroup is { } g)
        {
            stats.Cpu = new CpuUsage { Timestamp = at, UsageCoreNanoSeconds = new UInt64Value { Value = g.CpuUsageNanoseconds } };
            stats.Memory = new MemoryUsage
            {
                Timestamp = at,
                WorkingSetBytes = new UInt64Value { Value = g.MemoryWorkingSetBytes },
                UsageBytes = new UInt64Value { Value = g.MemoryUsageBytes },
                RssBytes = new UInt64Value { Value = g.MemoryRssBytes },
            };
        }

        return stats;
    }
}
