using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>
    /// Stores a migration archive streamed in, or unpacks it as it arrives when the first message asks; answers the path
    /// CreateContainer restores from. A cut stream stores nothing.
    /// </summary>
    public override async Task<WriteArchiveResponse> WriteArchive(IAsyncStreamReader<ArchiveChunk> requestStream, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(requestStream);
        ArgumentNullException.ThrowIfNull(context);
        var ct = context.CancellationToken;
        var first = await requestStream.MoveNext(ct) ? requestStream.Current : new ArchiveChunk();
        var received = await migrations.ReceiveAsync(Chunks(first, requestStream, ct), first.Unpack, ct);
        return new WriteArchiveResponse { ArchiveToken = received.Token, Path = received.Path, Bytes = received.Bytes, Unpacked = received.Unpacked };
    }

    private static async IAsyncEnumerable<ReadOnlyMemory<byte>> Chunks(ArchiveChunk first, IAsyncStreamReader<ArchiveChunk> stream, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        yield return first.Data.Memory;
        while (await stream.MoveNext(ct))
        {
            yield return stream.Current.Data.Memory;
        }
    }
}
