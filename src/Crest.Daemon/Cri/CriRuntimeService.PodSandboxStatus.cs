using System.Text.Json.Nodes;
using Crest.Cri.Mapping;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// CRI PodSandboxStatus: the pod's state, IPs and namespace options; NotFound when there is no such pod. With
    /// <c>verbose</c>, <c>info["info"]</c> holds the infra pid, netns, cgroup and CNI result as JSON.
    /// </summary>
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
            response.Info["info"] = new JsonObject
            {
                ["pid"] = s.InfraPid,
                ["netns"] = s.NetnsPath,
                ["cgroupsPath"] = s.CgroupsPath,
                ["cniNetwork"] = s.CniNetwork,
                ["cniResult"] = s.CniResult is null ? null : JsonNode.Parse(s.CniResult),
                ["runtimeHandler"] = s.RuntimeHandler,
            }.ToJsonString();
        }

        return response;
    }
}
