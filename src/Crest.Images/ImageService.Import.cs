using System.Formats.Tar;
using System.Text.Json;
using Crest.Core;
using Crest.Linux;
using Crest.Oci;

namespace Crest.Images;

public sealed partial class ImageService
{
    private const long MaxIndexBytes = 4 * 1024 * 1024;

    /// <summary>
    /// Makes a one-layer image from a root filesystem tarball (plain, gzip or zstd), like <c>podman import</c>:
    /// the layer is stored uncompressed, so its digest is its diff ID.
    /// </summary>
    public async Task<ImageRecord> ImportRootfsAsync(string tarPath, string name, CancellationToken ct) =>
        await ImportRootfsAsync(tarPath, name, annotations: null, ct).ConfigureAwait(false);

    /// <summary>As <see cref="ImportRootfsAsync(string, string, CancellationToken)"/>, with manifest annotations (checkpoint images carry their markers there).</summary>
    public async Task<ImageRecord> ImportRootfsAsync(string tarPath, string name, IReadOnlyDictionary<string, string>? annotations, CancellationToken ct)
    {
        var reference = ImageReference.Parse(name);
        using var shared = await _gcLock.ReadAsync(ct).ConfigureAwait(false);
        OneLayerImage image;
        try
        {
            await using var file = File.OpenRead(tarPath);
            image = await WriteOneLayerImageAsync(file, $"rootfs archive {tarPath}", annotations, ct).ConfigureAwait(false);
        }
        catch (FileNotFoundException e)
        {
            throw new CrestException(ErrorKind.NotFound, $"rootfs archive {tarPath} does not exist", e);
        }

        var record = await MaterializeAsync(reference, image.Manifest, image.ManifestDigest, image.ManifestDigest, MediaTypes.OciManifest, [image.ManifestDigest],
            FromContentStore(tarPath), _ => { }, ct, recordRepoDigest: false).ConfigureAwait(false);
        ImagesLog.Imported(logger, reference.ToString(), record.Id.ToString());
        return record;
    }

    /// <summary>
    /// Builds a one-layer image from a tar stream as <see cref="ImportRootfsAsync(string, string, IReadOnlyDictionary{string, string}?, CancellationToken)"/>
    /// does and pushes it to the registry <paramref name="name"/> (REGISTRY/REPO:TAG) names, without making it an image of
    /// this node: its blobs leave the content store once the registry has them, or the push failed (in the background, so
    /// that the answer does not wait for the GC lock behind other pulls). A migration's source publishes its checkpoint this
    /// way for the target to pull. Returns the pushed manifest's digest and the layer's size.
    /// </summary>
    public async Task<(Digest Manifest, long LayerBytes)> PublishRootfsAsync(Stream tar, string description, string name, IReadOnlyDictionary<string, string>? annotations,
        CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(tar);
        var target = PushTarget(name);
        OneLayerImage? image = null;
        try
        {
            using var shared = await _gcLock.ReadAsync(ct).ConfigureAwait(false);
            image = await WriteOneLayerImageAsync(tar, description, annotations, ct).ConfigureAwait(false);
            await PushManifestAndBlobsAsync(target, image.Manifest, image.ManifestJson, credentials: null, progress: null, ct).ConfigureAwait(false);
            ImagesLog.Pushed(logger, target.ToString(), image.ManifestDigest.ToString());
            return (image.ManifestDigest, image.Manifest.Layers[0].Size);
        }
        finally
        {
            if (image is not null)
            {
                PublishedBlobsDropped = DropUnreferencedAsync(name, [image.ManifestDigest, Digest.Parse(image.Manifest.Config.Digest), Digest.Parse(image.Manifest.Layers[0].Digest)]);
            }
        }
    }

    /// <summary>The last <see cref="PublishRootfsAsync"/>'s removal of its blobs (tests wait for it).</summary>
    internal Task PublishedBlobsDropped { get; private set; } = Task.CompletedTask;

    /// <summary>
    /// Deletes blobs no image references, under the GC lock (so no import or pull claims one meanwhile); a failure leaves
    /// them to the next garbage collection.
    /// </summary>
    private async Task DropUnreferencedAsync(string image, IReadOnlyList<Digest> blobs)
    {
        try
        {
            await Task.Yield();
            using var exclusive = await _gcLock.WriteAsync(CancellationToken.None).ConfigureAwait(false);
            var live = (await metadata.ListImagesAsync(CancellationToken.None).ConfigureAwait(false)).SelectMany(i => i.Blobs).ToHashSet();
            foreach (var blob in blobs.Where(b => !live.Contains(b)))
            {
                content.Delete(blob);
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            ImagesLog.PublishedBlobsKept(logger, image, e.Message);
        }
    }

    /// <summary>A one-layer image's manifest, written with its config and layer into the content store.</summary>
    private sealed record OneLayerImage(byte[] ManifestJson, ImageManifest Manifest, Digest ManifestDigest);

    /// <summary>
    /// Stores <paramref name="source"/> (a tar: plain, gzip or zstd) decompressed as one layer, its digest being its diff ID,
    /// under the layer limits and the content store's disk budget, then the config and manifest (with
    /// <paramref name="annotations"/>) that make it an image. The caller holds the GC lock shared.
    /// </summary>
    private async Task<OneLayerImage> WriteOneLayerImageAsync(Stream source, string description, IReadOnlyDictionary<string, string>? annotations, CancellationToken ct)
    {
        Digest layer;
        long size;
        try
        {
            // The layer is stored decompressed: the bytes, the expansion and the content store's disk are checked as it
            // streams in, so a small bomb stops long before it fills the disk.
            var compressed = new CountingReadStream(source, leaveOpen: true);
            using var disk = options.BudgetOf(options.ContentFilesystem);
            await using var tar = new ExpansionGuardStream(LayerStreams.Decompress(compressed), () => compressed.BytesRead, description,
                new ExpansionGuard(options.Limits.MaxBytes, "the limit for one image layer", options.Limits.MaxExpansionRatio, options.Limits.RatioCheckFloorBytes,
                    "[images] max_expansion_ratio", disk));
            (layer, size) = await content.WriteStreamAsync(tar, ct).ConfigureAwait(false);
        }
        catch (InvalidDataException e)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"{description} cannot be decompressed: {e.Message}", e);
        }

        var now = time.GetUtcNow();
        var configJson = JsonSerializer.SerializeToUtf8Bytes(new ImageConfig
        {
            Created = now,
            Architecture = Platforms.CurrentArchitecture,
            Os = "linux",
            Config = new ContainerDefaults { Env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] },
            RootFs = new RootFs { DiffIds = [layer.ToString()] },
        }, OciJson.Default.ImageConfig);
        var config = await content.WriteAsync(configJson, ct).ConfigureAwait(false);
        var manifestJson = JsonSerializer.SerializeToUtf8Bytes(new ImageManifest
        {
            MediaType = MediaTypes.OciManifest,
            Config = new Descriptor { MediaType = MediaTypes.OciConfig, Digest = config.ToString(), Size = configJson.Length },
            Layers = [new Descriptor { MediaType = MediaTypes.OciLayer, Digest = layer.ToString(), Size = size }],
            Annotations = annotations is { Count: > 0 } ? annotations : null,
        }, OciJson.Default.ImageManifest);
        var manifestDigest = await content.WriteAsync(manifestJson, ct).ConfigureAwait(false);
        return new OneLayerImage(manifestJson, ParseJson(manifestJson, OciJson.Default.ImageManifest, "the imported manifest"), manifestDigest);
    }

    /// <summary>
    /// Loads every image of an OCI image layout archive (what <c>skopeo copy … oci-archive:</c> and
    /// <c>podman save --format oci-archive</c> write). Only <c>oci-layout</c>, <c>index.json</c> and
    /// <c>blobs/sha256/*</c> are read, each blob verified against its name; names come from the
    /// <c>org.opencontainers.image.ref.name</c> annotation, or from <paramref name="name"/>.
    /// </summary>
    public async Task<IReadOnlyList<ImageRecord>> LoadArchiveAsync(string archivePath, string? name, CancellationToken ct)
    {
        using var shared = await _gcLock.ReadAsync(ct).ConfigureAwait(false);
        byte[]? indexJson = null;
        var sawLayout = false;
        // Each blob is taken from the content store's disk before it is stored; loads and pulls beside this one count.
        using var disk = options.BudgetOf(options.ContentFilesystem);
        try
        {
            await using var file = File.OpenRead(archivePath);
            await using var tar = LayerStreams.Decompress(file);
            using var reader = new TarReader(tar);
            TarEntry? entry;
            while ((entry = await reader.GetNextEntryAsync(copyData: false, ct).ConfigureAwait(false)) is not null)
            {
                string path;
                try
                {
                    path = SafeExtractor.NormalizeName(entry.Name);
                }
                catch (FormatException e)
                {
                    throw new CrestException(ErrorKind.InvalidArgument, $"archive {archivePath}: entry \"{entry.Name}\" is refused: {e.Message}");
                }

                if (entry.EntryType is TarEntryType.Directory or TarEntryType.GlobalExtendedAttributes or TarEntryType.ExtendedAttributes)
                {
                    continue;
                }

                if (entry.EntryType is not (TarEntryType.RegularFile or TarEntryType.V7RegularFile))
                {
                    throw new CrestException(ErrorKind.InvalidArgument, $"archive {archivePath}: entry \"{entry.Name}\" is a {entry.EntryType}; an OCI layout holds only regular files");
                }

                switch (path)
                {
                    case "oci-layout":
                        sawLayout = true;
                        continue;
                    case "index.json":
                        if (entry.Length > MaxIndexBytes)
                        {
                            throw new CrestException(ErrorKind.InvalidArgument, $"archive {archivePath}: index.json is larger than {MaxIndexBytes} bytes");
                        }

                        using (var ms = new MemoryStream())
                        {
                            await entry.DataStream!.CopyToAsync(ms, ct).ConfigureAwait(false);
                            indexJson = ms.ToArray();
                        }

                        continue;
                    case "manifest.json" or "repositories":
                        throw new CrestException(ErrorKind.InvalidArgument,
                            $"archive {archivePath} is a docker-archive; crest loads OCI layout archives (convert with: skopeo copy docker-archive:FILE oci-archive:OUT)");
                }

                if (path.StartsWith("blobs/sha256/", StringComparison.Ordinal) && Digest.TryParseHex(path["blobs/sha256/".Length..], out var digest))
                {
                    if (entry.DataStream is { } data)
                    {
                        if (disk is not null && !disk.TryTake(entry.Length))
                        {
                            throw new CrestException(ErrorKind.ResourceExhausted,
                                $"load of archive {archivePath} was refused before storing blob {digest}: it declares {entry.Length} bytes, more than {disk.Describe()} "
                                + $"(less the {disk.Taken} bytes this load has stored); free space on the node (remove unused images) or lower the reserve");
                        }

                        await content.IngestAsync(data, digest, entry.Length, null, ct).ConfigureAwait(false);
                    }

                    continue;
                }

                // Other files (a README, an ignored blob algorithm) carry nothing Crest uses.
            }
        }
        catch (FileNotFoundException e)
        {
            throw new CrestException(ErrorKind.NotFound, $"archive {archivePath} does not exist", e);
        }
        catch (Exception e) when (e is InvalidDataException or FormatException or EndOfStreamException or InvalidOperationException or OverflowException)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"archive {archivePath} is not a readable tar: {e.Message}", e);
        }

        if (!sawLayout || indexJson is null)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"archive {archivePath} is not an OCI image layout (it lacks {(sawLayout ? "index.json" : "the oci-layout file")})");
        }

        var index = ParseJson(indexJson, OciJson.Default.ImageIndex, $"index.json of {archivePath}");
        var loaded = new List<ImageRecord>();
        foreach (var descriptor in index.Manifests)
        {
            var refName = descriptor.Annotations?.GetValueOrDefault("io.containerd.image.name")
                ?? descriptor.Annotations?.GetValueOrDefault("org.opencontainers.image.ref.name");
            var reference = NameFor(refName, name, archivePath);
            var targetDigest = Digest.Parse(descriptor.Digest);
            var blobs = new List<Digest> { targetDigest };
            var manifestDigest = targetDigest;
            if (MediaTypes.IsIndex(descriptor.MediaType))
            {
                var nested = await ReadJsonAsync(targetDigest, OciJson.Default.ImageIndex, ct).ConfigureAwait(false);
                var chosen = Platforms.Choose(nested.Manifests)
                    ?? throw new CrestException(ErrorKind.FailedPrecondition, $"archive {archivePath}: {reference} has no manifest for linux/{Platforms.CurrentArchitecture}");
                manifestDigest = Digest.Parse(chosen.Digest);
                blobs.Add(manifestDigest);
            }
            else if (!MediaTypes.IsManifest(descriptor.MediaType))
            {
                continue;
            }

            if (!content.Exists(manifestDigest))
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"archive {archivePath} lacks the manifest blob {manifestDigest}");
            }

            var manifest = await ReadJsonAsync(manifestDigest, OciJson.Default.ImageManifest, ct).ConfigureAwait(false);
            loaded.Add(await MaterializeAsync(reference, manifest, manifestDigest, targetDigest, descriptor.MediaType, blobs,
                FromContentStore(archivePath), _ => { }, ct, recordRepoDigest: false).ConfigureAwait(false));
        }

        if (loaded.Count == 0)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"archive {archivePath} names no image manifest in its index.json");
        }

        return loaded;
    }

    private static ImageReference? NameFor(string? refName, string? name, string archive)
    {
        if (name is not null)
        {
            // A bare tag in the archive ("latest") goes with the name given.
            var nameHasTag = name.IndexOf(':', name.LastIndexOf('/') + 1) >= 0 || name.Contains('@', StringComparison.Ordinal);
            var withTag = refName is not null && !refName.Contains('/', StringComparison.Ordinal) && !refName.Contains(':', StringComparison.Ordinal) && !nameHasTag
                ? $"{name}:{refName}"
                : name;
            return ImageReference.Parse(withTag);
        }

        if (refName is not null && ImageReference.TryParse(refName, out var parsed, out _) && (refName.Contains('/', StringComparison.Ordinal) || refName.Contains(':', StringComparison.Ordinal)))
        {
            return parsed;
        }

        throw new CrestException(ErrorKind.InvalidArgument,
            $"archive {archive} does not name its image{(refName is null ? "" : $" (its ref.name is \"{refName}\")")}; give a name: crest image load ARCHIVE NAME");
    }

    private Func<Descriptor, Action<long>, CancellationToken, Task> FromContentStore(string source) => (descriptor, progress, _) =>
    {
        var digest = Digest.Parse(descriptor.Digest);
        if (content.SizeOf(digest) is not { } size)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"{source} lacks blob {digest}");
        }

        if (size != descriptor.Size)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"{source}: blob {digest} has {size} bytes, its descriptor declares {descriptor.Size}");
        }

        progress(size);
        return Task.CompletedTask;
    };
}
