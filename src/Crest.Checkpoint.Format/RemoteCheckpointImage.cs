using System.Security.Cryptography;
using System.Text.Json;
using Crest.Core;
using Crest.Images;
using Crest.Linux;
using Crest.Oci;

namespace Crest.Checkpoint.Format;

/// <summary>
/// A checkpoint image read straight from its registry, with no runtime: the manifest (through an index for this
/// node's platform) must carry a checkpoint annotation; each layer is downloaded into the caller's private directory,
/// verified against its digest, and unpacked through <see cref="SafeExtractor"/> with the files-only policy and the
/// restore caps; then the layers are read like a local checkpoint image. Used by <c>crest checkpoint inspect IMAGE</c>.
/// </summary>
public static class RemoteCheckpointImage
{
    private const int MaxManifestBytes = 4 << 20;

    public static async Task<RestorePlan> ReadAsync(IRegistryClient registry, string reference, string workDir, string stagingDir, RestoreLimits limits, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(registry);
        ArgumentNullException.ThrowIfNull(limits);
        if (!ImageReference.TryParse(reference, out var image, out var error))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"{reference} is neither a checkpoint archive on this machine nor an image reference: {error}");
        }

        var annotations = new Dictionary<string, string>(StringComparer.Ordinal);
        var fetched = await registry.GetManifestAsync(image, image.Digest?.ToString() ?? image.Tag ?? "latest", null, ct).ConfigureAwait(false);
        if (MediaTypes.IsIndex(fetched.MediaType))
        {
            var index = Deserialize(fetched.Content, OciJson.Default.ImageIndex, reference);
            Merge(annotations, index.Annotations);
            var chosen = Platforms.Choose(index.Manifests) ?? index.Manifests.FirstOrDefault(m => MediaTypes.IsManifest(m.MediaType))
                ?? throw new CrestException(ErrorKind.NotFound, $"image {reference} is an index with no manifest for this node");
            fetched = await registry.GetManifestAsync(image, chosen.Digest, null, ct).ConfigureAwait(false);
        }

        var manifest = Deserialize(fetched.Content, OciJson.Default.ImageManifest, reference);
        Merge(annotations, manifest.Annotations);
        if (!CheckpointImageAnnotations.Markers.Any(annotations.ContainsKey))
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"image {reference} is not a checkpoint image: its manifest carries none of {string.Join(", ", CheckpointImageAnnotations.Markers)}");
        }

        if (manifest.Layers.Sum(l => Math.Max(0, l.Size)) > limits.MaxArchiveBytes)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint image {reference} has layers larger than {limits.MaxArchiveBytes} bytes, the configured limit");
        }

        var layerDirs = new List<string>();
        for (var i = 0; i < manifest.Layers.Count; i++)
        {
            var layer = manifest.Layers[i];
            if (!Digest.TryParse(layer.Digest, out var digest))
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint image {reference}: layer {i} has digest \"{layer.Digest}\", which is not a sha256 digest");
            }

            // The download is as large as the layer declares (a longer one is refused as it streams) and must fit on the disk.
            using (var disk = limits.BudgetOf(workDir))
            {
                if (disk is not null && !disk.TryTake(Math.Max(0, layer.Size)))
                {
                    throw new CrestException(ErrorKind.ResourceExhausted,
                        $"checkpoint image {reference} was refused before downloading layer {i} ({layer.Size} bytes): more than {disk.Describe()}; free space on the node or lower the reserve");
                }
            }

            var blob = Path.Combine(workDir, $"layer-{i}");
            await using (var output = new FileStream(blob, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.ReadWrite, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
            {
                await using (var input = await registry.GetBlobAsync(image, digest, null, ct).ConfigureAwait(false))
                {
                    using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
                    var buffer = new byte[1 << 16];
                    long total = 0;
                    int n;
                    while ((n = await input.ReadAsync(buffer, ct).ConfigureAwait(false)) > 0)
                    {
                        total += n;
                        if (total > layer.Size)
                        {
                            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint image {reference}: layer {i} is larger than the {layer.Size} bytes its manifest declares");
                        }

                        if (total > limits.MaxArchiveBytes)
                        {
                            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint image {reference}: layer {i} is larger than {limits.MaxArchiveBytes} bytes, the configured limit");
                        }

                        hash.AppendData(buffer, 0, n);
                        await output.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                    }

                    if (Digest.FromHash(hash.GetHashAndReset()) != digest)
                    {
                        throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint image {reference}: layer {i} does not match its digest {digest}");
                    }
                }

                output.Position = 0;
                var dir = Directory.CreateDirectory(Path.Combine(workDir, $"layer-{i}.d"), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute).FullName;
                await new CheckpointReader(limits).UnpackAsync(output, dir, $"layer {i} of checkpoint image {reference}", ct).ConfigureAwait(false);
                layerDirs.Add(dir);
            }

            File.Delete(blob);
        }

        layerDirs.Reverse();
        return new CheckpointReader(limits).ReadImageLayers(layerDirs, reference, stagingDir, ct);
    }

    private static T Deserialize<T>(byte[] content, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> type, string reference)
    {
        if (content.Length > MaxManifestBytes)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"image {reference}: its manifest is larger than {MaxManifestBytes} bytes");
        }

        try
        {
            return JsonSerializer.Deserialize(content, type) ?? throw new JsonException("it is JSON null");
        }
        catch (JsonException e)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"image {reference}: its manifest is not valid JSON: {e.Message}", e);
        }
    }

    private static void Merge(Dictionary<string, string> into, IReadOnlyDictionary<string, string>? from)
    {
        foreach (var (k, v) in from ?? new Dictionary<string, string>())
        {
            into[k] = v;
        }
    }
}
