using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>
    /// Writes the next round of a running container's rootfs diff and holds it for ReadArchive. FailedPrecondition when the
    /// container does not run; NotFound for a rounds token this node does not know.
    /// </summary>
    public override async Task<PrepareRootfsRoundResponse> PrepareRootfsRound(PrepareRootfsRoundRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var round = await migrations.PrepareRootfsRoundAsync(request.ContainerId, request.RoundsToken.Length > 0 ? request.RoundsToken : null, context.CancellationToken);
        return new PrepareRootfsRoundResponse
        {
            RoundsToken = round.RoundsToken,
            Round = round.Round,
            ArchiveToken = round.ArchiveToken,
            ArchiveBytes = round.ArchiveBytes,
            Files = round.Files,
            Bytes = round.Bytes,
            Deleted = round.Deleted,
        };
    }
}
