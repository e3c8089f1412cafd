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
            // Crest implements neither yet; say so rather than let the kubelet assume.
            Features = new RuntimeFeatures { SupplementalGroupsPolicy = false },
        };
        response.Status.Conditions.Add(status.Conditions.Select(c => new RuntimeCondition
        {
            Type = c.Type,
            Status = c.Status,
            Reason = c.Reason,
            Message = c.Message,
        }));
        // The CRI names the default handler with the empty string; every handler is listed by name too.
        var handlerNames = status.Handlers.Where(h => h.Name == runtime.DefaultHandler).Select(_ => "")
            .Concat(status.Handlers.Select(h => h.Name));
        response.RuntimeHandlers.Add(handlerNames.Select(name => new RuntimeHandler
        {
            Name = name,
            Features = new RuntimeHandlerFeatures { RecursiveReadOnlyMounts = false, UserNamespaces = false },
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
