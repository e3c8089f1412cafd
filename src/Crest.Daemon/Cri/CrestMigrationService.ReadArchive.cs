using Crest.Api.V1;
using Google.Protobuf;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    private const int ChunkBytes = 1 << 20;

    /// <summary>Streams a held migration archive in 1 MiB chunks. NotFound for a token this node does not hold.</summary>
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
