using Crest.Core;
using Crest.Oci;

namespace Crest.Images;

public sealed partial class ImageService
{
    /// <summary>Pushes a local image's platform manifest, config and layers to the registry its name points at.</summary>
    public async Task<Digest> PushAsync(string name, RegistryCredentials? credentials, Action<PullProgress>? progress, CancellationToken ct)
    {
        var record = await ResolveLocalAsync(name, ct).ConfigureAwait(false)
            ?? throw new CrestException(ErrorKind.NotFound, $"image {name} is not in Crest's image store; pull, import or load it first");
        var target = PushTarget(name);
        var manifestBytes = await ReadBlobAsync(record.ManifestDigest, ct).ConfigureAwait(false);
        var manifest = ParseJson(manifestBytes, OciJson.Default.ImageManifest, $"the manifest of {name}");
        await PushManifestAndBlobsAsync(target, manifest, manifestBytes, credentials, progress, ct).ConfigureAwait(false);
        ImagesLog.Pushed(logger, target.ToString(), record.ManifestDigest.ToString());
        return record.ManifestDigest;
    }

    /// <summary>The registry reference a push goes to; an image ID is refused (it names no registry).</summary>
    private static ImageReference PushTarget(string name) =>
        ImageReference.TryParse(name, out var target, out _) && !Digest.TryParse(name, out _) && !Digest.TryParseHex(name, out _)
            ? target
            : throw new CrestException(ErrorKind.InvalidArgument, $"push needs a name with a registry, such as 127.0.0.1:5000/app:v1; \"{name}\" is an ID");

    /// <summary>Uploads the layers and config a manifest names (each skipped when the registry has it), then the manifest.</summary>
    private async Task PushManifestAndBlobsAsync(ImageReference target, ImageManifest manifest, byte[] manifestBytes, RegistryCredentials? credentials,
        Action<PullProgress>? progress, CancellationToken ct)
    {
        foreach (var blob in manifest.Layers.Append(manifest.Config))
        {
            var digest = Digest.Parse(blob.Digest);
            progress?.Invoke(new PullProgress("uploading", blob.Digest, 0, blob.Size));
            await registry.PushBlobAsync(target, digest, blob.Size, () => content.OpenRead(digest), credentials, ct).ConfigureAwait(false);
            progress?.Invoke(new PullProgress("done", blob.Digest, blob.Size, blob.Size));
        }

        var mediaType = manifest.MediaType ?? MediaTypes.OciManifest;
        await registry.PushManifestAsync(target, target.Digest?.ToString() ?? target.Tag!, manifestBytes, mediaType, credentials, ct).ConfigureAwait(false);
    }
}
