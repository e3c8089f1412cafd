using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>
    /// Stores one rootfs round streamed in, under the staging the first message names (a new one when empty). A cut stream
    /// stores nothing, and neither does one whose data differs from its SHA-256 trailer (DataLoss); NotFound for a staging
    /// this node does not hold.
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
        var chunks = TrailedChunks.ReadAsync(first, requestStream, m => m.Data, m => m.Sha256, "the rootfs round sent to this node", ct);
        var staged = await migrations.ReceiveRootfsRoundAsync(first.StagingToken.Length > 0 ? first.StagingToken : null, chunks, ct);
        return new WriteRootfsRoundResponse { StagingToken = staged.StagingToken, Round = staged.Round, Bytes = staged.Bytes };
    }
}
