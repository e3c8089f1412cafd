using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriImageService
{
    public override async Task<RemoveImageResponse> RemoveImage(RemoveImageRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        if (string.IsNullOrWhiteSpace(request.Image?.Image))
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, "RemoveImage needs image.image"));
        }

        // Idempotent (CRI): removing an image that is not here succeeds.
        await images.RemoveAsync(request.Image.Image, context.CancellationToken);
        return new RemoveImageResponse();
    }
}
