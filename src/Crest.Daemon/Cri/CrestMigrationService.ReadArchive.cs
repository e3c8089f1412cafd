using Crest.Api.V1;
using Google.Protobuf;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>
    /// 64 KiB: each chunk a client receives is a new array, and one of 85,000 bytes or more is allocated on the large
    /// object heap, whose churn kept the relaying client's background GC busy for a fifth of a gigabyte's transfer.
    /// </summary>
    private const int ChunkBytes = 64 << 10;

    /// <summary>Streams a held migration archive in 64 KiB chunks. NotFound for a token this node does not hold.</summary>
    public override async Task ReadArchive(ReadArchiveRequest request, IServerStreamWriter<ArchiveChunk> responseStream, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(responseStream);
        ArgumentNullException.ThrowIfNull(context);
        await using var file = migrations.OpenArchive(request.ArchiveToken);
        var buffer = new byte[ChunkBytes];
        int read;
        while ((read = await file.ReadAsync(buffer, context.CancellationToken)) > 0)
        {
            await responseStream.WriteAsync(new ArchiveChunk { Data = ByteString.CopyFrom(buffer, 0, read) }, context.CancellationToken);
        }
    }
}
