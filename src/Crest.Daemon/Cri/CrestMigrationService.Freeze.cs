using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>
    /// Checkpoints a running container and leaves it frozen, holding the archive for ReadArchive. FailedPrecondition
    /// when it is not running; any failure leaves it running as it was. With page_server_address (post-copy) the memory
    /// stays out of the archive and is served from a page server until the target has it. With tcp_established the
    /// established TCP connections are dumped and the pod's TCP traffic stays locked until Resume or the pod's removal.
    /// With rootfs_rounds_token the archive carries only the rootfs changes since the last round the target has. With
    /// page_client_certificate the page server speaks TLS and accepts only that client (the answer carries its own certificate).
    /// </summary>
    public override async Task<FreezeResponse> Freeze(FreezeRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var frozen = await migrations.FreezeAsync(request.ContainerId, TimeSpan.FromSeconds(Math.Max(0, request.Timeout)), request.TcpEstablished, context.CancellationToken,
            request.PageServerAddress.Length > 0 ? request.PageServerAddress : null, request.RootfsRoundsToken.Length > 0 ? request.RootfsRoundsToken : null,
            request.PageClientCertificate.Length > 0 ? request.PageClientCertificate : null);
        return new FreezeResponse
        {
            ContainerId = frozen.ContainerId,
            ArchiveToken = frozen.ArchiveToken,
            ArchiveBytes = frozen.ArchiveBytes,
            PausedMs = (long)frozen.Paused.TotalMilliseconds,
            CriuDumpMs = (long)frozen.CriuDump.TotalMilliseconds,
            PageServer = frozen.PageServer ?? "",
            PageServerCertificate = frozen.PageServerCertificate ?? "",
            RootfsEntries = frozen.RootfsEntries,
            RootfsBytes = frozen.RootfsBytes,
        };
    }
}
