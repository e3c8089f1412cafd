using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriImageService
{
    public override async Task<PullImageResponse> PullImage(PullImageRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        if (string.IsNullOrWhiteSpace(request.Image?.Image))
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, "PullImage needs image.image, the reference to pull"));
        }

        var record = await images.PullAsync(request.Image.Image, Credentials(request.Auth), null, context.CancellationToken);
        // As containerd does: the image reference returned is the image ID.
        return new PullImageResponse { ImageRef = record.Id.ToString() };
    }
}
