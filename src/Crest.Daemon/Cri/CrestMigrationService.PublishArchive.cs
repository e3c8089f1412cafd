using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>
    /// Pushes a held container or pod checkpoint to a registry as a checkpoint OCI image (crest migrate --via); the target
    /// pulls it by the digest answered. InvalidArgument for a name without a registry; NotFound for a token this node does
    /// not hold.
    /// </summary>
    public override async Task<PublishArchiveResponse> PublishArchive(PublishArchiveRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var published = await migrations.PublishAsync(request.ArchiveToken, request.Image, context.CancellationToken);
        return new PublishArchiveResponse { ManifestDigest = published.ManifestDigest, LayerBytes = published.LayerBytes };
    }
}
