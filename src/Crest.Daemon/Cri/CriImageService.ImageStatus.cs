using System.Text.Json;
using System.Text.Json.Nodes;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriImageService
{
    public override async Task<ImageStatusResponse> ImageStatus(ImageStatusRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        if (string.IsNullOrWhiteSpace(request.Image?.Image))
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, "ImageStatus needs image.image"));
        }

        var details = await images.InspectAsync(request.Image.Image, context.CancellationToken);
        // The CRI answers a missing image with an empty status, not an error.
        if (details is null)
        {
            return new ImageStatusResponse();
        }

        var response = new ImageStatusResponse { Image = ToCri(details.Image, details.Config.Config?.User) };
        if (request.Verbose)
        {
            var info = new JsonObject
            {
                ["imageId"] = details.Image.Id.ToString(),
                ["manifestDigest"] = details.Image.ManifestDigest.ToString(),
                ["targetDigest"] = details.Image.TargetDigest.ToString(),
                ["targetMediaType"] = details.Image.TargetMediaType,
                ["chainID"] = details.Image.ChainId,
                ["size"] = details.Image.Size,
                ["layers"] = new JsonArray([.. details.Manifest.Layers.Select(l => (JsonNode)new JsonObject
                {
                    ["digest"] = l.Digest,
                    ["mediaType"] = l.MediaType,
                    ["size"] = l.Size,
                })]),
                ["imageSpec"] = JsonNode.Parse(details.RawConfig),
                ["annotations"] = new JsonObject((await images.AnnotationsAsync(details, context.CancellationToken))
                    .Select(a => KeyValuePair.Create(a.Key, (JsonNode?)a.Value))),
            };
            response.Info["info"] = info.ToJsonString(new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        }

        return response;
    }
}
