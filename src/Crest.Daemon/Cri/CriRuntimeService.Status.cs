using System.Text.Json;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    private static readonly JsonSerializerOptions InfoJson = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

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
        var handlers = status.Handlers.Where(h => h.Name == runtime.DefaultHandler).Select(h => (Name: "", Handler: h))
            .Concat(status.Handlers.Select(h => (h.Name, Handler: h)));
        response.RuntimeHandlers.Add(handlers.Select(h => new RuntimeHandler
        {
            Name = h.Name,
            Features = new RuntimeHandlerFeatures { RecursiveReadOnlyMounts = h.Handler.Features.RecursiveReadOnlyMounts, UserNamespaces = false },
        }));
        if (request.Verbose)
        {
            // Verbose info is a map of JSON documents, as containerd and CRI-O return it.
            foreach (var (key, value) in status.Detail)
            {
                response.Info[key] = JsonSerializer.Serialize(value, InfoJson);
            }
        }

        return response;
    }
}
