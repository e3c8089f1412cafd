using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>
    /// Stores a migration archive streamed in, or unpacks it as it arrives when the first message asks; answers the path
    /// CreateContainer restores from. A cut stream stores nothing, and neither does one whose bytes differ from its
    /// SHA-256 trailer (DataLoss).
    /// </summary>
    public override async Task<WriteArchiveResponse> WriteArchive(IAsyncStreamReader<ArchiveChunk> requestStream, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(requestStream);
        ArgumentNullException.ThrowIfNull(context);
        var ct = context.CancellationToken;
        var first = await requestStream.MoveNext(ct) ? requestStream.Current : new ArchiveChunk();
        var chunks = TrailedChunks.ReadAsync(first, requestStream, m => m.Data, m => m.Sha256, "the migration archive sent to this node", ct);
        var received = await migrations.ReceiveAsync(chunks, first.Unpack, ct);
        return new WriteArchiveResponse { ArchiveToken = received.Token, Path = received.Path, Bytes = received.Bytes, Unpacked = received.Unpacked };
    }
}
