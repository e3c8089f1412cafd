using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>Forgets rootfs rounds: a source's record of what it sent, or a target's staged rounds. Unknown tokens succeed.</summary>
    public override Task<DropRootfsRoundsResponse> DropRootfsRounds(DropRootfsRoundsRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        migrations.DropRootfsRounds(request.Token);
        return Task.FromResult(new DropRootfsRoundsResponse());
    }
}
