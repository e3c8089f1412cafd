using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>
    /// Stores one rootfs round streamed in, under the staging the first message names (a new one when empty). A cut stream
    /// stores nothing; NotFound for a staging this node does not hold.
    /// </summary>
    public override async Task<WriteRootfsRoundResponse> WriteRootfsRound(IAsyncStreamReader<RootfsRoundChunk> requestStream, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(requestStream);
        ArgumentNullException.ThrowIfNull(context);
        var ct = context.CancellationToken;
        if (!await requestStream.MoveNext(ct))
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, "WriteRootfsRound received no message; the first names the staging (empty for a new one)"));
        }

        var first = requestStream.Current;
        var staged = await migrations.ReceiveRootfsRoundAsync(first.StagingToken.Length > 0 ? first.StagingToken : null, RoundChunks(first, requestStream, ct), ct);
        return new WriteRootfsRoundResponse { StagingToken = staged.StagingToken, Round = staged.Round, Bytes = staged.Bytes };
    }

    private static async IAsyncEnumerable<ReadOnlyMemory<byte>> RoundChunks(RootfsRoundChunk first, IAsyncStreamReader<RootfsRoundChunk> stream, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        yield return first.Data.Memory;
        while (await stream.MoveNext(ct))
        {
            yield return stream.Current.Data.Memory;
        }
    }
}
