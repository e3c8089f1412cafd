using Crest.Core;
using Crest.Linux;
using Crest.Oci;

namespace Crest.Images;

public sealed partial class ImageService
{
    /// <summary>
    /// Pulls <paramref name="image"/> and returns its record. Concurrent pulls of the same reference share one
    /// transfer; each caller may leave (its token) without cancelling the others. Nothing half-pulled is recorded.
    /// </summary>
    public async Task<ImageRecord> PullAsync(string image, RegistryCredentials? credentials, Action<PullProgress>? progress, CancellationToken ct)
    {
        var reference = ImageReference.Parse(image);
        var key = reference.ToString();
        var mine = new InflightPull();
        var pull = _inflight.GetOrAdd(key, mine);
        pull.Watch(progress);
        try
        {
            if (ReferenceEquals(pull, mine))
            {
                _ = RunPullAsync(mine, key, reference, credentials);
            }

            return await pull.Result.Task.WaitAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            pull.Unwatch(progress);
        }
    }

    private async Task RunPullAsync(InflightPull pull, string key, ImageReference reference, RegistryCredentials? credentials)
    {
        try
        {
            // The shared transfer outlives any one caller's deadline; it is bounded by the registry client's retries.
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var record = await PullCoreAsync(reference, credentials, pull.Report, CancellationToken.None).ConfigureAwait(false);
            ImageMetrics.Pulled(clock.Elapsed, record.Size);
            pull.Result.TrySetResult(record);
        }
        catch (Exception e)
        {
            ImageMetrics.Failed();
            pull.Result.TrySetException(e);
        }
        finally
        {
            _inflight.TryRemove(new KeyValuePair<string, InflightPull>(key, pull));
        }
    }

    private async Task<ImageRecord> PullCoreAsync(ImageReference reference, RegistryCredentials? credentials, Action<PullProgress> report, CancellationToken ct)
    {
        using var shared = await _gcLock.ReadAsync(ct).ConfigureAwait(false);
        var what = reference.ToString();
        report(new PullProgress("resolving", null, 0, 0, what));
        var target = await registry.GetManifestAsync(reference, reference.Digest?.ToString() ?? reference.Tag!, credentials, ct).ConfigureAwait(false);
        await content.WriteAsync(target.Content, ct).ConfigureAwait(false);
        var blobs = new List<Digest> { target.Digest };

        var manifestBytes = target.Content;
        var manifestDigest = target.Digest;
        if (MediaTypes.IsIndex(target.MediaType))
        {
            var index = ParseJson(target.Content, OciJson.Default.ImageIndex, $"the index of {what}");
            var chosen = Platforms.Choose(index.Manifests) ?? throw new CrestException(ErrorKind.FailedPrecondition,
                $"image {what} has no manifest for linux/{Platforms.CurrentArchitecture}; it offers {string.Join(", ", index.Manifests.Select(m => m.Platform is { } p ? $"{p.Os}/{p.Architecture}{(p.Variant is null ? "" : "/" + p.Variant)}" : "(no platform)"))}");
            var fetched = await registry.GetManifestAsync(reference, chosen.Digest, credentials, ct).ConfigureAwait(false);
            await content.WriteAsync(fetched.Content, ct).ConfigureAwait(false);
            manifestBytes = fetched.Content;
            manifestDigest = fetched.Digest;
            blobs.Add(manifestDigest);
        }
        else if (!MediaTypes.IsManifest(target.MediaType))
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"{what} resolved to {target.MediaType}, which is not an image manifest or index");
        }

        var manifest = ParseJson(manifestBytes, OciJson.Default.ImageManifest, $"the manifest of {what}");
        return await MaterializeAsync(reference, manifest, manifestDigest, target.Digest, target.MediaType, blobs,
            (descriptor, progress, token) => FetchBlobAsync(reference, descriptor, credentials, progress, token), report, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Makes an image from a manifest whose blobs come from <paramref name="fetch"/> (a registry, or an archive
    /// already in the content store): config verified and checked for this platform, layers stored and unpacked
    /// once per chain ID with their diff IDs verified, then the record written last.
    /// </summary>
    private async Task<ImageRecord> MaterializeAsync(ImageReference? reference, ImageManifest manifest, Digest manifestDigest, Digest targetDigest,
        string targetMediaType, List<Digest> blobs, Func<Descriptor, Action<long>, CancellationToken, Task> fetch, Action<PullProgress> report, CancellationToken ct,
        bool recordRepoDigest = true)
    {
        var what = reference?.ToString() ?? manifestDigest.ToString();
        if (!MediaTypes.IsConfig(manifest.Config.MediaType))
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"{what} is not a container image: its config has media type \"{manifest.Config.MediaType}\"");
        }

        var configDigest = Digest.Parse(manifest.Config.Digest);
        await fetch(manifest.Config, _ => { }, ct).ConfigureAwait(false);
        var config = await ReadJsonAsync(configDigest, OciJson.Default.ImageConfig, ct).ConfigureAwait(false);
        if (config.Os != "linux" || config.Architecture != Platforms.CurrentArchitecture)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"image {what} is for {config.Os}/{config.Architecture}; this node runs linux/{Platforms.CurrentArchitecture}");
        }

        if (config.RootFs.DiffIds.Count != manifest.Layers.Count)
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"image {what} is inconsistent: its manifest lists {manifest.Layers.Count} layers, its config {config.RootFs.DiffIds.Count} diff IDs");
        }

        foreach (var layer in manifest.Layers)
        {
            if (!MediaTypes.IsLayer(layer.MediaType))
            {
                throw new CrestException(ErrorKind.FailedPrecondition, $"image {what} has a layer {layer.Digest} of unsupported media type \"{layer.MediaType}\"");
            }
        }

        var chains = ChainIds(config.RootFs.DiffIds);
        using var held = HoldSpaceForLayers(what, manifest.Layers);
        using var downloads = new SemaphoreSlim(options.ParallelDownloads);
        // One failed layer stops the others: nothing keeps downloading after the pull has failed.
        using var abort = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var fetchCt = abort.Token;
        var fetches = manifest.Layers.Select(async (layer, i) =>
        {
            if (await snapshots.GetAsync(chains[i], fetchCt).ConfigureAwait(false) is not null && content.Exists(Digest.Parse(layer.Digest)))
            {
                report(new PullProgress("exists", layer.Digest, layer.Size, layer.Size));
                return;
            }

            await downloads.WaitAsync(fetchCt).ConfigureAwait(false);
            try
            {
                await fetch(layer, done => report(new PullProgress("downloading", layer.Digest, done, layer.Size)), fetchCt).ConfigureAwait(false);
            }
            finally
            {
                downloads.Release();
            }
        }).ToList();

        string? parent = null;
        try
        {
            await UnpackInOrderAsync().ConfigureAwait(false);
        }
        catch
        {
            await abort.CancelAsync().ConfigureAwait(false);
            try
            {
                await Task.WhenAll(fetches).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or CrestException or IOException or HttpRequestException)
            {
                // The first failure is the one reported; the others were cut short because of it.
            }

            throw;
        }

        async Task UnpackInOrderAsync()
        {
            for (var i = 0; i < manifest.Layers.Count; i++)
            {
                await fetches[i].ConfigureAwait(false);
                var layer = manifest.Layers[i];
                var diffId = Digest.Parse(config.RootFs.DiffIds[i]);
                var chain = chains[i];
                var parentChain = parent;
                await snapshots.CommitAsync(chain, parentChain, async (dir, token) =>
                {
                    report(new PullProgress("unpacking", layer.Digest, 0, layer.Size));
                    return await UnpackLayerAsync(Digest.Parse(layer.Digest), diffId, dir, what, held, token).ConfigureAwait(false);
                }, ct).ConfigureAwait(false);
                report(new PullProgress("done", layer.Digest, layer.Size, layer.Size));
                parent = chain;
            }

            await Task.WhenAll(fetches).ConfigureAwait(false);
        }

        blobs.Add(configDigest);
        blobs.AddRange(manifest.Layers.Select(l => Digest.Parse(l.Digest)));
        var existing = await metadata.GetImageAsync(configDigest, ct).ConfigureAwait(false);
        var tags = new List<string>(existing?.RepoTags ?? []);
        var digests = new List<string>(existing?.RepoDigests ?? []);
        if (reference?.TagReference is { } tag && !tags.Contains(tag))
        {
            tags.Add(tag);
        }

        if (recordRepoDigest && reference is not null && !digests.Contains(reference.WithDigest(targetDigest)))
        {
            digests.Add(reference.WithDigest(targetDigest));
        }

        var record = new ImageRecord(configDigest, manifestDigest, targetDigest, targetMediaType, chains.Count > 0 ? chains[^1] : null,
            manifest.Config.Size + manifest.Layers.Sum(l => l.Size), existing?.CreatedAt ?? time.GetUtcNow(), tags, digests,
            [.. blobs.Distinct(), .. existing?.Blobs ?? []], chains);
        CrashPoints.Hit(CrashPoints.ImagePullUnpacked);
        await metadata.PutImageAsync(record, ct).ConfigureAwait(false);
        ImagesLog.Pulled(logger, what, configDigest.ToString(), record.Size);
        report(new PullProgress("complete", null, record.Size, record.Size, configDigest.ToString()));
        return (await metadata.GetImageAsync(configDigest, ct).ConfigureAwait(false))!;
    }

    private async Task FetchBlobAsync(ImageReference reference, Descriptor descriptor, RegistryCredentials? credentials, Action<long> progress, CancellationToken ct)
    {
        var digest = Digest.Parse(descriptor.Digest);
        if (content.Exists(digest))
        {
            progress(descriptor.Size);
            return;
        }

        RequireSpaceForBlob($"pull of image {reference}", "downloading", digest, descriptor.Size);
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                await using var stream = await registry.GetBlobAsync(reference, digest, credentials, ct).ConfigureAwait(false);
                await content.IngestAsync(stream, digest, descriptor.Size, progress, ct).ConfigureAwait(false);
                return;
            }
            catch (CrestException e) when (e.Kind == ErrorKind.Unavailable && attempt < 3)
            {
                ImagesLog.RetryingBlob(logger, digest.ToString(), reference.ToString(), attempt, e.Message);
            }
        }
    }

    /// <summary>
    /// Refuses a blob that declares more bytes than the content store's filesystem can take, before it is copied in.
    /// Measured again for each blob: other pulls and containers write to the same disk meanwhile.
    /// </summary>
    private void RequireSpaceForBlob(string operation, string verb, Digest digest, long declaredSize)
    {
        // Free space now, on its own: a pull's blobs were held in sum by HoldSpaceForLayers, and counting that hold again
        // here would refuse the pull's own layers.
        if (options.ContentFilesystem is not { } filesystem)
        {
            return;
        }

        using var disk = DiskBudget.Measure(filesystem, options.Limits.DiskReserveBytes, "[images] disk_reserve_bytes", options.FreeBytesOf);
        if (declaredSize > disk.Available)
        {
            throw new CrestException(ErrorKind.ResourceExhausted,
                $"{operation} was refused before {verb} blob {digest}: it declares {declaredSize} bytes, more than {disk.Describe()}; "
                + "free space on the node (remove unused images) or lower the reserve");
        }
    }

    /// <summary>
    /// Refuses a pull whose layers not yet on this node declare more bytes than the content store's filesystem can take,
    /// before any of them is downloaded (the downloads run in parallel, so one blob at a time would not see the sum), and
    /// holds those bytes until the pull ends, so that pulls and restores beside it count them as taken.
    /// </summary>
    private DiskBudget? HoldSpaceForLayers(string image, IReadOnlyList<Descriptor> layers)
    {
        if (options.BudgetOf(options.ContentFilesystem) is not { } disk)
        {
            return null;
        }

        var missing = layers.Where(l => !content.Exists(Digest.Parse(l.Digest))).ToList();
        var declared = missing.Sum(l => Math.Max(0, l.Size));
        if (disk.TryHold(declared))
        {
            return disk;
        }

        using (disk)
        {
            throw new CrestException(ErrorKind.ResourceExhausted,
                $"pull of image {image} was refused before downloading its layers: the {missing.Count} layer{(missing.Count == 1 ? "" : "s")} not yet on this node ({string.Join(", ", missing.Select(l => l.Digest))}) "
                + $"declare {declared} bytes, more than {disk.Describe()}; free space on the node (remove unused images) or lower the reserve");
        }
    }

    /// <summary>Unpacks one layer blob into a snapshot directory, verifying the uncompressed bytes against the diff ID.</summary>
    private async Task<long> UnpackLayerAsync(Digest blob, Digest diffId, string dir, string image, DiskBudget? pull, CancellationToken ct)
    {
        var what = $"layer {blob} of image {image}";
        // The compressed bytes the decompressor consumed, against the bytes written: a bomb stops while it expands.
        await using var compressed = new CountingReadStream(content.OpenRead(blob));
        await using var hashing = new HashingReadStream(LayerStreams.Decompress(compressed));
        // The pull's own held downloads are not counted against its unpacks.
        using var disk = options.BudgetOf(options.SnapshotFilesystem, pull);
        using var extractor = new SafeExtractor(dir, ExtractionPolicy.ImageLayer with
        {
            MaxEntries = options.Limits.MaxEntries,
            MaxBytes = options.Limits.MaxBytes,
            MaxExpansionRatio = options.Limits.MaxExpansionRatio,
            RatioCheckFloorBytes = options.Limits.RatioCheckFloorBytes,
            RatioSetting = "[images] max_expansion_ratio",
            Disk = disk,
        });
        ExtractionResult result;
        try
        {
            result = await extractor.ExtractAsync(hashing, what, () => compressed.BytesRead, ct).ConfigureAwait(false);
        }
        catch (InvalidDataException e)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"{what} cannot be decompressed: {e.Message}", e);
        }

        var actual = await hashing.FinishAsync(ct).ConfigureAwait(false);
        if (actual != diffId)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"{what} unpacks to content {actual}, but the image config says its diff ID is {diffId}; the image is corrupt");
        }

        return result.Bytes;
    }
}
