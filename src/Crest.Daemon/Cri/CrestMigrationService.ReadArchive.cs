using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>
    /// Streams a held migration archive in 64 KiB chunks (a stop-copy freeze's is made from its work directory as it
    /// goes), ended by the SHA-256 trailer of its bytes as this node made them. NotFound for a token this node does not hold.
    /// </summary>
    public override async Task ReadArchive(ReadArchiveRequest request, IServerStreamWriter<ArchiveChunk> responseStream, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(responseStream);
        ArgumentNullException.ThrowIfNull(context);
        await using var output = new ArchiveChunkStream(responseStream, context.CancellationToken);
        await migrations.SendArchiveAsync(request.ArchiveToken, output, context.CancellationToken);
        await output.FinishAsync();
    }
}
