using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>
    /// Checkpoints every container of a ready pod at one instant and leaves them all frozen and held, holding the pod
    /// checkpoint for ReadArchive (as one tar) until DropArchive. FailedPrecondition when the pod is not ready or a
    /// container does not run; a failure up to the dump resumes every container; one after it leaves them frozen and held for the client's Resume of each. Resume or KillFrozen ends each.
    /// A container named in rootfs_rounds_tokens carries only its rootfs changes since the last round the target has.
    /// With tcp_established the pod's established TCP connections are dumped and its TCP traffic stays locked until Resume
    /// or the pod's removal. With page_server_address (post-copy) each container's memory stays out of the checkpoint and a
    /// page server of its own serves it (page_servers), over TLS with page_client_certificates.
    /// </summary>
    public override async Task<FreezePodResponse> FreezePod(FreezePodRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var frozen = await migrations.FreezePodAsync(request.PodSandboxId, TimeSpan.FromSeconds(Math.Max(0, request.Timeout)), context.CancellationToken,
            request.RootfsRoundsTokens.Count > 0 ? request.RootfsRoundsTokens : null, request.TcpEstablished,
            request.PageServerAddress.Length > 0 ? request.PageServerAddress : null, request.PageClientCertificates);
        var response = new FreezePodResponse
        {
            ArchiveToken = frozen.ArchiveToken,
            PausedMs = (long)frozen.Paused.TotalMilliseconds,
            CheckpointBytes = frozen.Bytes,
            RootfsEntries = frozen.RootfsEntries,
            RootfsBytes = frozen.RootfsBytes,
            TcpEstablished = request.TcpEstablished,
        };
        response.ContainerIds.AddRange(frozen.ContainerIds);
        foreach (var (id, server) in frozen.PageServers)
        {
            response.PageServers[id] = new PodPageServer { PageServer = server.Endpoint, Certificate = server.Certificate ?? "" };
        }

        return response;
    }
}
