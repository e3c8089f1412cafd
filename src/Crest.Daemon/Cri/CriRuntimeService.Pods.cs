using System.Text.Json;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

// One file per RPC would be five tiny files of three lines each for the pod RPCs; they are grouped here,
// each still a thin adapter over SandboxService/PodService.
internal sealed partial class CriRuntimeService
{
    public override async Task<RunPodSandboxResponse> RunPodSandbox(RunPodSandboxRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var sandbox = await sandboxes.RunAsync(CriMapping.ToDomain(request.Config ?? new PodSandboxConfig(), request.RuntimeHandler), context.CancellationToken);
        return new RunPodSandboxResponse { PodSandboxId = sandbox.Id };
    }

    public override async Task<StopPodSandboxResponse> StopPodSandbox(StopPodSandboxRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        await pods.StopAsync(request.PodSandboxId, context.CancellationToken);
        return new StopPodSandboxResponse();
    }

    public override async Task<RemovePodSandboxResponse> RemovePodSandbox(RemovePodSandboxRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        await pods.RemoveAsync(request.PodSandboxId, context.CancellationToken);
        return new RemovePodSandboxResponse();
    }

    public override async Task<PodSandboxStatusResponse> PodSandboxStatus(PodSandboxStatusRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var s = await sandboxes.GetAsync(request.PodSandboxId, context.CancellationToken);
        var status = new PodSandboxStatus
        {
            Id = s.Id,
            Metadata = CriMapping.Metadata(s.Spec),
            State = CriMapping.ToCri(s.State),
            CreatedAt = CriMapping.Nanos(s.CreatedAt),
            Network = new PodSandboxNetworkStatus { Ip = s.Ips.Count > 0 ? s.Ips[0] : "" },
            Linux = new LinuxPodSandboxStatus
            {
                Namespaces = new Namespace
                {
                    Options = new NamespaceOption
                    {
                        Network = (global::Runtime.V1.NamespaceMode)(int)s.Spec.Namespaces.Network,
                        Pid = (global::Runtime.V1.NamespaceMode)(int)s.Spec.Namespaces.Pid,
                        Ipc = (global::Runtime.V1.NamespaceMode)(int)s.Spec.Namespaces.Ipc,
                        UsernsOptions = s.Spec.Namespaces.User is { } userns ? CriMapping.ToCri(userns) : null,
                    },
                },
            },
            RuntimeHandler = s.RuntimeHandler,
        };
        status.Network.AdditionalIps.Add(s.Ips.Skip(1).Select(ip => new PodIP { Ip = ip }));
        status.Labels.Add(s.Spec.Labels.ToDictionary());
        status.Annotations.Add(s.Spec.Annotations.ToDictionary());
        var response = new PodSandboxStatusResponse { Status = status };
        if (request.Verbose)
        {
            response.Info["info"] = JsonSerializer.Serialize(new
            {
                pid = s.InfraPid,
                netns = s.NetnsPath,
                cgroupsPath = s.CgroupsPath,
                cniNetwork = s.CniNetwork,
                cniResult = s.CniResult is null ? (JsonElement?)null : JsonDocument.Parse(s.CniResult).RootElement,
                runtimeHandler = s.RuntimeHandler,
            });
        }

        return response;
    }

    public override async Task<ListPodSandboxResponse> ListPodSandbox(ListPodSandboxRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var f = request.Filter;
        var response = new ListPodSandboxResponse();
        foreach (var s in await sandboxes.ListAsync(context.CancellationToken))
        {
            if (!CriMapping.Matches(s, f?.Id, f?.LabelSelector) || (f?.State is not null && f.State.State != CriMapping.ToCri(s.State)))
            {
                continue;
            }

            var item = new PodSandbox
            {
                Id = s.Id,
                Metadata = CriMapping.Metadata(s.Spec),
                State = CriMapping.ToCri(s.State),
                CreatedAt = CriMapping.Nanos(s.CreatedAt),
                RuntimeHandler = s.RuntimeHandler,
            };
            item.Labels.Add(s.Spec.Labels.ToDictionary());
            item.Annotations.Add(s.Spec.Annotations.ToDictionary());
            response.Items.Add(item);
        }

        return response;
    }
}
