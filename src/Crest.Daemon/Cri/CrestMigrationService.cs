using Crest.Checkpoint;

namespace Crest.Daemon.Cri;

/// <summary>
/// crest.v1.CrestMigration: each node's half of a live migration that the CRI lacks (freeze and hold, send and receive
/// the archive, resume or kill the frozen source, log timestamps). One partial file per RPC, each one call to
/// <see cref="MigrationService"/>; the orchestration is the client's (<c>crest migrate</c>).
/// </summary>
internal sealed partial class CrestMigrationService(MigrationService migrations) : Crest.Api.V1.CrestMigration.CrestMigrationBase
{
    private static long UnixNanos(DateTimeOffset? at) => at is { } t ? (t.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks) * 100 : 0;
}
