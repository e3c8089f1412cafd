using Crest.Core;
using Google.Protobuf;
using Grpc.Core;

namespace Crest.Daemon.Cri;

/// <summary>
/// The data of a client stream of chunk messages that may end with a SHA-256 trailer (a message with only the digest):
/// the data's digest is checked against it before the stream counts as complete, so a receiver keeps nothing when they
/// differ (DataLoss); data after the trailer is refused. A stream without a trailer is passed through unchecked.
/// </summary>
internal static class TrailedChunks
{
    public static async IAsyncEnumerable<ReadOnlyMemory<byte>> ReadAsync<TMessage>(TMessage first, IAsyncStreamReader<TMessage> stream,
        Func<TMessage, ByteString> data, Func<TMessage, ByteString> sha256, string what,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        using var digest = new StreamDigest();
        var message = first;
        while (true)
        {
            if (!sha256(message).IsEmpty)
            {
                if (!data(message).IsEmpty || await stream.MoveNext(ct))
                {
                    throw new CrestException(ErrorKind.InvalidArgument, $"{what} has data after its SHA-256 trailer; the trailer ends the stream");
                }

                digest.Verify(sha256(message).Span, what);
                yield break;
            }

            digest.Append(data(message).Span);
            yield return data(message).Memory;
            if (!await stream.MoveNext(ct))
            {
                yield break;
            }

            message = stream.Current;
        }
    }
}
