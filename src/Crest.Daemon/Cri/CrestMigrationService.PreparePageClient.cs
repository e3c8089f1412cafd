using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>
    /// A post-copy target, before the source freezes: a fresh key pair for the page client, whose certificate the client
    /// carries to the source. FailedPrecondition when this node's CRIU cannot speak TLS, with what to do.
    /// </summary>
    public override async Task<PreparePageClientResponse> PreparePageClient(PreparePageClientRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var identity = await migrations.PreparePageClientAsync(context.CancellationToken);
        return new PreparePageClientResponse { IdentityToken = identity.Token, Certificate = identity.Certificate };
    }
}
