using System.Text.Json;
using System.Text.Json.Nodes;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    private static readonly JsonSerializerOptions InfoJson = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>
    /// CRI Status: the RuntimeReady, NetworkReady and CheckpointReady conditions from real checks, and each handler's
    /// features (the default one also under the empty name). With <c>verbose</c>, <c>info</c> maps keys to JSON documents.
    /// </summary>
    public override async Task<StatusResponse> Status(StatusRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var status = await nodeStatus.GetAsync(context.CancellationToken);
        var response = new StatusResponse
        {
            Status = new RuntimeStatus(),
            // Merge and Strict (ContainerUser.Resolve), and ContainerStatus.user reports the result.
            Features = new RuntimeFeatures { SupplementalGroupsPolicy = true },
        };
        response.Status.Conditions.Add(status.Conditions.Select(c => new RuntimeCondition
        {
            Type = c.Type,
            Status = c.Status,
            Reason = c.Reason,
            Message = c.Message,
        }));
        // The CRI names the default handler with the empty string; every handler is listed by name too.
        var handlers = status.Handlers.Where(h => h.Name == nodeStatus.DefaultHandler).Select(h => (Name: "", Status: h))
            .Concat(status.Handlers.Select(h => (h.Name, Status: h)));
        // User namespaces need the node (kernel, id-mapped mounts under the root, reachable roots; checked once) and a
        // handler that answers: runc and crun both make a pod's user namespace and join it.
        var userNamespaces = sandboxes.UserNamespaceProblem is null;
        response.RuntimeHandlers.Add(handlers.Select(h => new RuntimeHandler
        {
            Name = h.Name,
            Features = new RuntimeHandlerFeatures { RecursiveReadOnlyMounts = h.Status.Features.RecursiveReadOnlyMounts, UserNamespaces = userNamespaces && h.Status.Available },
        }));
        if (request.Verbose)
        {
            // Verbose info is a map of JSON documents, as containerd and CRI-O return it.
            foreach (var (key, value) in status.Detail)
            {
                response.Info[key] = value?.ToJsonString(InfoJson) ?? "null";
            }

            // containerd's key, read by critest: the parent of stateDir is where it checks id-mapped mount support.
            // Crest's container root filesystems (and the layers under them) live under the root.
            response.Info["config"] = new JsonObject { ["stateDir"] = nodeStatus.ContainersDir }.ToJsonString(InfoJson);
        }

        return response;
    }
}
