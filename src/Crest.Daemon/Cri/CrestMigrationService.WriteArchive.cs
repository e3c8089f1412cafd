using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>Stores a migration archive streamed in; answers the path CreateContainer restores from. A cut stream stores nothing.</summary>
    public override async Task<WriteArchiveResponse> WriteArchive(IAsyncStreamReader<ArchiveChunk> requestStream, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(requestStream);
        ArgumentNullException.ThrowIfNull(context);
        var (token, path, bytes) = await migrations.ReceiveAsync(Chunks(requestStream, context.CancellationToken), context.CancellationToken);
        return new WriteArchiveResponse { ArchiveToken = token, Path = path, Bytes = bytes };
    }

    private static async IAsyncEnumerable<ReadOnlyMemory<byte>> Chunks(IAsyncStreamReader<ArchiveChunk> stream, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        while (await stream.MoveNext(ct))
        {
            yield return stream.Current.Data.Memory;
        }
    }
}
