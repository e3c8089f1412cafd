using Crest.Core;
using Crest.Images;
using Crest.Linux;
using Crest.Oci;

namespace Crest.Runtime;

// ContainerStats and PodSandboxStats: cgroup counters, the writable layer's size, the pod's interface counters.
public sealed partial class ContainerService
{
    /// <summary>A container's resource use at one moment (CRI ContainerStats).</summary>
    public sealed record ContainerUsage(ContainerRecord Container, DateTimeOffset Time, CgroupUsage? Cgroup, long WritableBytes, long WritableInodes, string WritableLayerPath);

    /// <summary>CPU, memory and writable-layer use of a container, from its cgroup and its overlay upper directory.</summary>
    public async Task<ContainerUsage> StatsAsync(string idOrPrefix, CancellationToken ct)
    {
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        var sandbox = await sandboxes.FindAsync(c.SandboxId, ct).ConfigureAwait(false);
        var cgroup = sandbox is null || c.State != ContainerState.Running ? null : linux.CgroupUsage(SpecBuilder.CgroupsPathOf(sandbox, c.Id));
        var upper = bundles.For(c.Id).Upper;
        var writable = ImageService.Usage(upper, upper);
        return new ContainerUsage(c, time.GetUtcNow(), cgroup, writable.Bytes, writable.Inodes, upper);
    }

    /// <summary>A pod's resource use: its running containers summed, and its network interface counters.</summary>
    public sealed record PodUsage(SandboxRecord Sandbox, DateTimeOffset Time, IReadOnlyList<ContainerUsage> Containers, ulong CpuNanoseconds, ulong WorkingSetBytes, ulong UsageBytes, (ulong Rx, ulong Tx)? Network);

    public async Task<PodUsage> PodStatsAsync(string sandboxId, CancellationToken ct)
    {
        var sandbox = await sandboxes.GetAsync(sandboxId, ct).ConfigureAwait(false);
        var usages = new List<ContainerUsage>();
        foreach (var c in (await ListAsync(ct).ConfigureAwait(false)).Where(c => c.SandboxId == sandbox.Id && c.State == ContainerState.Running))
        {
            usages.Add(await StatsAsync(c.Id, ct).ConfigureAwait(false));
        }

        var infra = linux.CgroupUsage(SpecBuilder.CgroupsPathOf(sandbox, sandbox.Id));
        var cgroups = usages.Select(u => u.Cgroup).Append(infra).OfType<CgroupUsage>().ToList();
        return new PodUsage(sandbox, time.GetUtcNow(), usages,
            (ulong)cgroups.Sum(g => (decimal)g.CpuUsageNanoseconds), (ulong)cgroups.Sum(g => (decimal)g.MemoryWorkingSetBytes), (ulong)cgroups.Sum(g => (decimal)g.MemoryUsageBytes),
            // eth0's byte counters as the pod sees them, through its infra process.
            sandbox.State == SandboxState.Ready ? linux.InterfaceCounters(sandbox.InfraPid, CniNetwork.InterfaceName) : null);
    }
}
