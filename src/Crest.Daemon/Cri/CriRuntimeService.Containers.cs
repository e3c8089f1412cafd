using System.Text.Json;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

// The container lifecycle RPCs, each a thin adapter over ContainerService.
internal sealed partial class CriRuntimeService
{
    public override async Task<CreateContainerResponse> CreateContainer(CreateContainerRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var spec = CriMapping.ToDomain(request.Config ?? new ContainerConfig());
        // A checkpoint (an archive path or a checkpoint image) takes the restore path; it never falls through to a normal create.
        var c = await restores.DetectAsync(spec.Image, context.CancellationToken) is { } checkpoint
            ? await restores.CreateAsync(request.PodSandboxId, spec, checkpoint, context.CancellationToken)
            : await containers.CreateAsync(request.PodSandboxId, spec, context.CancellationToken);
        return new CreateContainerResponse { ContainerId = c.Id };
    }

    public override async Task<StartContainerResponse> StartContainer(StartContainerRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        await containers.StartAsync(request.ContainerId, context.CancellationToken);
        return new StartContainerResponse();
    }

    public override async Task<StopContainerResponse> StopContainer(StopContainerRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        // CRI: StopContainer on a stopped or missing container succeeds.
        try
        {
            await containers.StopAsync(request.ContainerId, TimeSpan.FromSeconds(Math.Max(0, request.Timeout)), context.CancellationToken);
        }
        catch (Crest.Core.CrestException e) when (e.Kind == Crest.Core.ErrorKind.NotFound)
        {
        }

        return new StopContainerResponse();
    }

    public override async Task<RemoveContainerResponse> RemoveContainer(RemoveContainerRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        await containers.RemoveAsync(request.ContainerId, context.CancellationToken);
        return new RemoveContainerResponse();
    }

    public override async Task<ContainerStatusResponse> ContainerStatus(ContainerStatusRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var c = await containers.GetAsync(request.ContainerId, context.CancellationToken);
        var status = new ContainerStatus
        {
            Id = c.Id,
            Metadata = CriMapping.Metadata(c.Spec),
            State = CriMapping.ToCri(c.State),
            CreatedAt = CriMapping.Nanos(c.CreatedAt),
            StartedAt = CriMapping.Nanos(c.StartedAt),
            FinishedAt = CriMapping.Nanos(c.FinishedAt),
            ExitCode = c.ExitCode,
            Image = new ImageSpec { Image = c.Spec.Image, UserSpecifiedImage = c.Spec.UserSpecifiedImage ?? "" },
            ImageRef = c.ImageRef,
            ImageId = c.ImageId,
            Reason = c.Reason,
            Message = c.Message,
            LogPath = c.LogFile,
        };
        status.Labels.Add(c.Spec.Labels.ToDictionary());
        status.Annotations.Add(c.Spec.Annotations.ToDictionary());
        status.Mounts.Add(c.Spec.Mounts.Select(CriMapping.ToCri));
        status.User = CriMapping.ToCri(c.User);
        var response = new ContainerStatusResponse { Status = status };
        if (request.Verbose)
        {
            response.Info["info"] = JsonSerializer.Serialize(new
            {
                pid = c.Pid,
                sandboxID = c.SandboxId,
                runtimeHandler = c.RuntimeHandler,
                snapshotKey = c.SnapshotKey,
                restored = c.Restored,
                runtimeSpec = ReadSpec(c.Id),
            });
        }

        return response;
    }

    public override async Task<ListContainersResponse> ListContainers(ListContainersRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var f = request.Filter;
        var response = new ListContainersResponse();
        foreach (var c in await containers.ListAsync(context.CancellationToken))
        {
            if (!CriMapping.Matches(c, f?.Id, f?.PodSandboxId, f?.LabelSelector) || (f?.State is not null && f.State.State != CriMapping.ToCri(c.State)))
            {
                continue;
            }

            var item = new Container
            {
                Id = c.Id,
                PodSandboxId = c.SandboxId,
                Metadata = CriMapping.Metadata(c.Spec),
                Image = new ImageSpec { Image = c.Spec.Image },
                ImageRef = c.ImageRef,
                ImageId = c.ImageId,
                State = CriMapping.ToCri(c.State),
                CreatedAt = CriMapping.Nanos(c.CreatedAt),
            };
            item.Labels.Add(c.Spec.Labels.ToDictionary());
            item.Annotations.Add(c.Spec.Annotations.ToDictionary());
            response.Containers.Add(item);
        }

        return response;
    }

    public override async Task<UpdateContainerResourcesResponse> UpdateContainerResources(UpdateContainerResourcesRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var r = request.Linux ?? throw new RpcException(new Status(StatusCode.InvalidArgument, "UpdateContainerResources needs linux resources"));
        await containers.UpdateResourcesAsync(request.ContainerId,
            new Crest.Core.ResourceSpec(r.CpuPeriod, r.CpuQuota, r.CpuShares, r.MemoryLimitInBytes, r.CpusetCpus, r.CpusetMems), context.CancellationToken);
        return new UpdateContainerResourcesResponse();
    }

    public override async Task<ExecSyncResponse> ExecSync(ExecSyncRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var r = await containers.ExecSyncAsync(request.ContainerId, [.. request.Cmd], TimeSpan.FromSeconds(Math.Max(0, request.Timeout)), context.CancellationToken);
        return new ExecSyncResponse
        {
            Stdout = Google.Protobuf.ByteString.CopyFrom(r.Stdout),
            Stderr = Google.Protobuf.ByteString.CopyFrom(r.Stderr),
            ExitCode = r.ExitCode,
        };
    }

    public override async Task<ReopenContainerLogResponse> ReopenContainerLog(ReopenContainerLogRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        await containers.ReopenLogAsync(request.ContainerId, context.CancellationToken);
        return new ReopenContainerLogResponse();
    }

    public override async Task<ContainerStatsResponse> ContainerStats(ContainerStatsRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        return new ContainerStatsResponse { Stats = ToCri(await containers.StatsAsync(request.ContainerId, context.CancellationToken)) };
    }

    public override async Task<ListContainerStatsResponse> ListContainerStats(ListContainerStatsRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var f = request.Filter;
        var response = new ListContainerStatsResponse();
        foreach (var c in await containers.ListAsync(context.CancellationToken))
        {
            if (c.State != Crest.Core.ContainerState.Running || !CriMapping.Matches(c, f?.Id, f?.PodSandboxId, f?.LabelSelector))
            {
                continue;
            }

            response.Stats.Add(ToCri(await containers.StatsAsync(c.Id, context.CancellationToken)));
        }

        return response;
    }

    public override async Task<PodSandboxStatsResponse> PodSandboxStats(PodSandboxStatsRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        return new PodSandboxStatsResponse { Stats = ToCri(await containers.PodStatsAsync(request.PodSandboxId, context.CancellationToken)) };
    }

    public override async Task<ListPodSandboxStatsResponse> ListPodSandboxStats(ListPodSandboxStatsRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var f = request.Filter;
        var response = new ListPodSandboxStatsResponse();
        foreach (var s in await sandboxes.ListAsync(context.CancellationToken))
        {
            if (s.State != Crest.Core.SandboxState.Ready || !CriMapping.Matches(s, f?.Id, f?.LabelSelector))
            {
                continue;
            }

            response.Stats.Add(ToCri(await containers.PodStatsAsync(s.Id, context.CancellationToken)));
        }

        return response;
    }

    private static PodSandboxStats ToCri(Crest.Runtime.ContainerService.PodUsage u)
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
                DefaultInterface = new NetworkInterfaceUsage { Name = Crest.Runtime.CniNetwork.InterfaceName, RxBytes = new UInt64Value { Value = n.Rx }, TxBytes = new UInt64Value { Value = n.Tx } },
            };
        }

        stats.Linux.Containers.Add(u.Containers.Select(ToCri));
        return stats;
    }

    private static ContainerStats ToCri(Crest.Runtime.ContainerService.ContainerUsage u)
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

    private JsonElement? ReadSpec(string id)
    {
        var file = Path.Combine(runtimeLayout.ContainerDir(id), "bundle", "config.json");
        return File.Exists(file) ? JsonDocument.Parse(File.ReadAllBytes(file)).RootElement : null;
    }
}
