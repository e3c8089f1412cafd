using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriImageService
{
    public override async Task<ListImagesResponse> ListImages(ListImagesRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var ct = context.CancellationToken;
        var response = new ListImagesResponse();
        var filter = request.Filter?.Image?.Image;
        if (!string.IsNullOrEmpty(filter))
        {
            // A filter names one image, by any name or ID; no match is an empty list, not an error.
            if (await images.ResolveLocalAsync(filter, ct) is { } one)
            {
                response.Images.Add(await ToCriAsync(one, ct));
            }

            return response;
        }

        foreach (var record in await images.ListAsync(ct))
        {
            response.Images.Add(await ToCriAsync(record, ct));
        }

        return response;
    }
}
