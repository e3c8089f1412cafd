using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>Kills a frozen migration source before it can run on; a container no longer running succeeds.</summary>
    public override async Task<KillFrozenResponse> KillFrozen(KillFrozenRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        await migrations.KillFrozenAsync(request.ContainerId, context.CancellationToken);
        return new KillFrozenResponse();
    }
}
