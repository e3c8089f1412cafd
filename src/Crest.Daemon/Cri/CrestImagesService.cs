using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

/// <summary>Crest's extension service (crest.v1.CrestImages): progress pulls, import, load, push, GC.</summary>
internal sealed class CrestImagesService(Images.ImageService images) : CrestImages.CrestImagesBase
{
    public override async Task PullWithProgress(PullWithProgressRequest request, IServerStreamWriter<PullEvent> responseStream, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(responseStream);
        ArgumentNullException.ThrowIfNull(context);
        var events = System.Threading.Channels.Channel.CreateBounded<PullEvent>(new System.Threading.Channels.BoundedChannelOptions(256)
        {
            FullMode = System.Threading.Channels.BoundedChannelFullMode.DropOldest,
        });
        var pull = images.PullAsync(request.Image, ToCredentials(request.Credentials),
            p => events.Writer.TryWrite(new PullEvent { Phase = p.Phase, Blob = p.Blob ?? "", Done = p.Done, Total = p.Total }), context.CancellationToken);
        _ = pull.ContinueWith(_ => events.Writer.TryComplete(), TaskScheduler.Default);
        await foreach (var e in events.Reader.ReadAllAsync(context.CancellationToken))
        {
            await responseStream.WriteAsync(e, context.CancellationToken);
        }

        var record = await pull;
        await responseStream.WriteAsync(new PullEvent { Phase = "complete", ImageId = record.Id.ToString(), Done = record.Size, Total = record.Size }, context.CancellationToken);
    }

    public override async Task<ImportRootfsResponse> ImportRootfs(ImportRootfsRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var record = await images.ImportRootfsAsync(request.Path, request.Name, request.Annotations.Count > 0 ? request.Annotations : null, context.CancellationToken);
        return new ImportRootfsResponse { ImageId = record.Id.ToString() };
    }

    public override async Task<LoadArchiveResponse> LoadArchive(LoadArchiveRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var loaded = await images.LoadArchiveAsync(request.Path, string.IsNullOrEmpty(request.Name) ? null : request.Name, context.CancellationToken);
        var response = new LoadArchiveResponse();
        foreach (var r in loaded)
        {
            var image = new LoadedImage { ImageId = r.Id.ToString() };
            image.RepoTags.Add(r.RepoTags);
            response.Images.Add(image);
        }

        return response;
    }

    public override async Task<PushResponse> Push(PushRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var digest = await images.PushAsync(request.Image, ToCredentials(request.Credentials), null, context.CancellationToken);
        return new PushResponse { ManifestDigest = digest.ToString() };
    }

    public override async Task<CollectGarbageResponse> CollectGarbage(CollectGarbageRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var (blobs, snapshots) = await images.CollectGarbageAsync(context.CancellationToken);
        return new CollectGarbageResponse { BlobsRemoved = blobs, SnapshotsRemoved = snapshots };
    }

    private static Images.RegistryCredentials? ToCredentials(Credentials? c) =>
        c is null ? null : CriImageService.Credentials(new global::Runtime.V1.AuthConfig
        {
            Username = c.Username,
            Password = c.Password,
            IdentityToken = c.IdentityToken,
            RegistryToken = c.RegistryToken,
        });
}
