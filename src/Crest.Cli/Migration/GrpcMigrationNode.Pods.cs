using Crest.Api.V1;
using Runtime.V1;

namespace Crest.Cli.Migration;

// A whole pod's migration over the node's socket: the source's FreezePod (crest.v1.CrestMigration), the target's CRI
// RestorePod (KEP-5823) and StartContainer, and ListPodSandbox by the migration's label for the undo.
internal sealed partial class GrpcMigrationNode
{
    public async Task<SourcePod> InspectPodAsync(string podId, CancellationToken ct)
    {
        var pod = await CallAsync("PodSandboxStatus", o => _runtime.PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = podId }, o).ResponseAsync, ct).ConfigureAwait(false);
        if (pod.Status.State != PodSandboxState.SandboxReady)
        {
            throw new CliFailure(ExitCodes.RuntimeError, $"pod {pod.Status.Id} on {Name} is not ready; only a ready pod can be migrated");
        }

        var filter = new ContainerFilter { PodSandboxId = pod.Status.Id };
        var listed = await CallAsync("ListContainers", o => _runtime.ListContainersAsync(new ListContainersRequest { Filter = filter }, o).ResponseAsync, ct).ConfigureAwait(false);
        if (listed.Containers.Count == 0)
        {
            throw new CliFailure(ExitCodes.RuntimeError, $"pod {pod.Status.Id} on {Name} has no containers to migrate");
        }

        if (listed.Containers.FirstOrDefault(c => c.State != ContainerState.ContainerRunning) is { } stopped)
        {
            throw new CliFailure(ExitCodes.RuntimeError,
                $"container {stopped.Id} ({stopped.Metadata?.Name}) of pod {pod.Status.Id} on {Name} is {stopped.State.ToString().ToUpperInvariant()}; every container of a migrated pod must run (remove the stopped ones first)");
        }

        var containers = new List<SourceContainer>();
        foreach (var c in listed.Containers.OrderBy(c => c.CreatedAt))
        {
            containers.Add(await InspectAsync(c.Id, ct).ConfigureAwait(false));
        }

        return new SourcePod(pod.Status.Id, containers);
    }

    public async Task<FrozenPod> FreezePodAsync(string podId, long timeoutSeconds, IReadOnlyDictionary<string, string> rootfsRounds, bool tcpEstablished, string? pageServerAddress,
        IReadOnlyDictionary<string, string> pageClientCertificates, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(rootfsRounds);
        ArgumentNullException.ThrowIfNull(pageClientCertificates);
        var request = new FreezePodRequest { PodSandboxId = podId, Timeout = timeoutSeconds, TcpEstablished = tcpEstablished, PageServerAddress = pageServerAddress ?? "" };
        foreach (var (containerId, token) in rootfsRounds)
        {
            request.RootfsRoundsTokens[containerId] = token;
        }

        foreach (var (containerId, certificate) in pageClientCertificates)
        {
            request.PageClientCertificates[containerId] = certificate;
        }

        var r = await CallAsync("crest.v1.CrestMigration/FreezePod", o => _migration.FreezePodAsync(request, o).ResponseAsync, ct).ConfigureAwait(false);
        return new FrozenPod(r.ArchiveToken, [.. r.ContainerIds], TimeSpan.FromMilliseconds(r.PausedMs), r.CheckpointBytes)
        {
            RootfsEntries = r.RootfsEntries,
            RootfsBytes = r.RootfsBytes,
            TcpEstablished = r.TcpEstablished,
            PageServers = r.PageServers.ToDictionary(kv => kv.Key, kv => new SourcePageServer(kv.Value.PageServer, kv.Value.Certificate.Length > 0 ? kv.Value.Certificate : null), StringComparer.Ordinal),
        };
    }

    public async Task<RestoredPod> RestorePodAsync(string checkpointPath, PodSandboxConfig config, IReadOnlyList<SourceContainer> containers, IReadOnlyDictionary<string, string> rootfsStaging,
        IReadOnlyList<string> expectedIps, IReadOnlyDictionary<string, LazyPagesSource> lazyPages, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(lazyPages);
        ArgumentNullException.ThrowIfNull(containers);
        ArgumentNullException.ThrowIfNull(expectedIps);
        ArgumentNullException.ThrowIfNull(rootfsStaging);
        var request = new RestorePodRequest { CheckpointPath = checkpointPath, Config = config };
        foreach (var c in containers)
        {
            var containerConfig = ConfigOf(c, c.Image);
            if (rootfsStaging.TryGetValue(c.Name, out var staging))
            {
                // Its restore claims the rounds staged before the freeze, as a container's CreateContainer does.
                containerConfig.Annotations[Crest.Core.RestorePlan.RootfsStagingAnnotation] = staging;
            }

            if (lazyPages.TryGetValue(c.Name, out var lazy))
            {
                AddLazyPages(containerConfig, lazy);
            }

            request.ContainerConfigs.Add(containerConfig);
        }

        var restored = await CallAsync("RestorePod", o => _runtime.RestorePodAsync(request, o).ResponseAsync, ct).ConfigureAwait(false);
        try
        {
            if (expectedIps.Count > 0)
            {
                // Before any start: a restored process must never run with another address than the one it was dumped with.
                var got = await PodIpsAsync(restored.PodSandboxId, ct).ConfigureAwait(false);
                var missing = expectedIps.Except(got, StringComparer.Ordinal).ToList();
                if (missing.Count > 0)
                {
                    throw new CliFailure(ExitCodes.RuntimeError,
                        $"--keep-address: pod {restored.PodSandboxId} on {Name} got the address {(got.Count == 0 ? "none" : string.Join(",", got))}, not the source pod's {string.Join(",", missing)}, "
                        + "so none of its containers was started; its CNI network must honour the ips capability (host-local with \"capabilities\": {\"ips\": true} on the plugin)");
                }
            }

            foreach (var c in restored.RestoredContainers)
            {
                await CallAsync("StartContainer", o => _runtime.StartContainerAsync(new StartContainerRequest { ContainerId = c.ContainerId }, o).ResponseAsync, ct).ConfigureAwait(false);
            }
        }
        catch (CliFailure e)
        {
            // The orchestrator removes what it knows of; a pod whose container failed to start is removed here. One whose
            // node went away meanwhile (NodeUnavailableException) may run there: the undo finds it by its label.
            await RemovePodAsync(restored.PodSandboxId, CancellationToken.None).ConfigureAwait(false);
            throw new CliFailure(e.ExitCode, $"{e.Message} (pod {restored.PodSandboxId} on {Name} removed)");
        }

        return new RestoredPod(restored.PodSandboxId, restored.RestoredContainers.ToDictionary(c => c.Name, c => c.ContainerId, StringComparer.Ordinal));
    }

    public async Task<IReadOnlyList<string>> FindRestoredPodsAsync(string migrationId, CancellationToken ct)
    {
        var filter = new PodSandboxFilter();
        filter.LabelSelector[MigrationLabels.MigrationId] = migrationId;
        var r = await CallAsync("ListPodSandbox", o => _runtime.ListPodSandboxAsync(new ListPodSandboxRequest { Filter = filter }, o).ResponseAsync, ct).ConfigureAwait(false);
        return [.. r.Items.Select(p => p.Id)];
    }
}
