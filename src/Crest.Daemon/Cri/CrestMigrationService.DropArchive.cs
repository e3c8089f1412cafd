using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>Deletes a held migration archive; an unknown token succeeds (a retried cleanup).</summary>
    public override Task<DropArchiveResponse> DropArchive(DropArchiveRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        migrations.DropArchive(request.ArchiveToken);
        return Task.FromResult(new DropArchiveResponse());
    }
}
