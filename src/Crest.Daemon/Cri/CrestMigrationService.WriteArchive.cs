using Crest.Core;
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
        var received = await migrations.ReceiveAsync(Chunks(first, requestStream, ct), first.Unpack, ct);
        return new WriteArchiveResponse { ArchiveToken = received.Token, Path = received.Path, Bytes = received.Bytes, Unpacked = received.Unpacked };
    }

    /// <summary>
    /// The data of the stream's messages; at its end, the data's SHA-256 is checked against the trailer (the last
    /// message) before the stream counts as complete, so the archive's receiver keeps nothing when they differ.
    /// </summary>
    private static async IAsyncEnumerable<ReadOnlyMemory<byte>> Chunks(ArchiveChunk first, IAsyncStreamReader<ArchiveChunk> stream, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        using var digest = new StreamDigest();
        var message = first;
        while (true)
        {
            if (!message.Sha256.IsEmpty)
            {
                if (!message.Data.IsEmpty || await stream.MoveNext(ct))
                {
                    throw new CrestException(ErrorKind.InvalidArgument, "a migration archive sent to this node has data after its SHA-256 trailer; the trailer ends the stream");
                }

                digest.Verify(message.Sha256.Span, "the migration archive sent to this node");
                yield break;
            }

            digest.Append(message.Data.Span);
            yield return message.Data.Memory;
            if (!await stream.MoveNext(ct))
            {
                yield break;
            }

            message = stream.Current;
        }
    }
}
