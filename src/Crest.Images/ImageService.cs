using System.Collections.Concurrent;
using System.Text;
using System.Text.Json;
using Crest.Core;
using Crest.Linux;
using Crest.Oci;
using Microsoft.Extensions.Logging;

namespace Crest.Images;

/// <summary>Progress of one pull, per blob, for people watching it.</summary>
public sealed record PullProgress(string Phase, string? Blob, long Done, long Total, string Message = "");

/// <summary>An image and what its config says, for ImageStatus.</summary>
public sealed record ImageDetails(ImageRecord Image, ImageConfig Config, byte[] RawConfig, ImageManifest Manifest);

/// <summary>Bytes and inodes a directory tree uses.</summary>
public sealed record FilesystemUsage(string Path, long Bytes, long Inodes);

public sealed record ImageServiceOptions(ExtractionLimits Limits, int ParallelDownloads = 3)
{
    public static ImageServiceOptions Default { get; } = new(new ExtractionLimits());

    /// <summary>The content store's directory, whose free space a blob must fit in before it is downloaded; null: not checked.</summary>
    public string? ContentFilesystem { get; init; }

    /// <summary>The snapshots' directory, whose free space a layer must fit in as it unpacks; null: not checked.</summary>
    public string? SnapshotFilesystem { get; init; }

    /// <summary>Free bytes of the filesystem holding a path; tests inject a small disk here.</summary>
    public Func<string, long> FreeBytesOf { get; init; } = DiskBudget.FreeBytesOf;

    /// <summary>Where concurrent pulls, loads and restores count what they write; tests that fake free space use one of their own.</summary>
    public DiskLedger Disks { get; init; } = DiskLedger.Shared;

    /// <summary>Opens a budget on <paramref name="filesystem"/> (null when it is not checked); <paramref name="sameOperation"/>'s holds are its own.</summary>
    internal DiskBudget? BudgetOf(string? filesystem, DiskBudget? sameOperation = null) =>
        filesystem is null ? null : Disks.Open(filesystem, Limits.DiskReserveBytes, "[images] disk_reserve_bytes", FreeBytesOf, sameOperation);
}

/// <summary>Limits an image layer unpacks within ([images] in config.toml).</summary>
public sealed record ExtractionLimits(long MaxEntries = 2_000_000, long MaxBytes = 1L << 40)
{
    /// <summary>
    /// Bytes a layer may unpack to per compressed byte once past <see cref="RatioCheckFloorBytes"/>; 0 turns the check off.
    /// Real layers stay far below 200:1 (text compresses about 5:1); a gzip of zeros reaches about 1000:1.
    /// </summary>
    public double MaxExpansionRatio { get; init; } = 200;

    /// <summary>Expansion up to this many bytes is not checked for its ratio: small, very compressible layers are normal.</summary>
    public long RatioCheckFloorBytes { get; init; } = 64L << 20;

    /// <summary>Bytes that must stay free on the content store's and the snapshots' filesystems after a pull.</summary>
    public long DiskReserveBytes { get; init; } = 1L << 30;
}

/// <summary>
/// Images: pull (verified, shared between concurrent callers, layers unpacked once per chain ID),
/// list, inspect, remove, garbage collection, import, load and push. No protobuf here; the CRI adapters map.
/// </summary>
public sealed partial class ImageService(
    IContentStore content,
    ISnapshotter snapshots,
    IImageMetadataStore metadata,
    IRegistryClient registry,
    ImageServiceOptions options,
    TimeProvider time,
    ILogger<ImageService> logger)
{
    private readonly ConcurrentDictionary<string, InflightPull> _inflight = new(StringComparer.Ordinal);
    private readonly AsyncReaderWriterLock _gcLock = new();

    public IContentStore Content => content;

    public ISnapshotter Snapshots => snapshots;

    /// <summary>Finds a local image by ID (sha256:…, 64 hex, or a unique hex prefix), by name:tag, or by name@digest.</summary>
    public async Task<ImageRecord?> ResolveLocalAsync(string image, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(image);
        var text = image.Trim();
        if (Digest.TryParse(text, out var id) || Digest.TryParseHex(text, out id))
        {
            if (await metadata.GetImageAsync(id, ct).ConfigureAwait(false) is { } byId)
            {
                return byId;
            }
        }

        var hex = text.StartsWith("sha256:", StringComparison.Ordinal) ? text[7..] : text;
        if (hex.Length is >= 3 and < 64 && hex.All(Uri.IsHexDigit))
        {
            var matches = (await metadata.ListImagesAsync(ct).ConfigureAwait(false)).Where(i => i.Id.Hex.StartsWith(hex, StringComparison.Ordinal)).ToList();
            if (matches.Count == 1)
            {
                return matches[0];
            }
        }

        if (!ImageReference.TryParse(text, out var reference, out _))
        {
            return null;
        }

        var key = reference.Digest is { } d ? reference.WithDigest(d) : reference.TagReference!;
        var resolved = await metadata.ResolveReferenceAsync(key, ct).ConfigureAwait(false);
        return resolved is { } r ? await metadata.GetImageAsync(r, ct).ConfigureAwait(false) : null;
    }

    public Task<IReadOnlyList<ImageRecord>> ListAsync(CancellationToken ct) => metadata.ListImagesAsync(ct);

    /// <summary>An image with its config and manifest, or null when it is not here.</summary>
    public async Task<ImageDetails?> InspectAsync(string image, CancellationToken ct)
    {
        var record = await ResolveLocalAsync(image, ct).ConfigureAwait(false);
        if (record is null)
        {
            return null;
        }

        var manifest = await ReadJsonAsync(record.ManifestDigest, OciJson.Default.ImageManifest, ct).ConfigureAwait(false);
        var raw = await ReadBlobAsync(record.Id, ct).ConfigureAwait(false);
        var config = JsonSerializer.Deserialize(raw, OciJson.Default.ImageConfig)
            ?? throw new CrestException(ErrorKind.Internal, $"the config of image {record.Id} is empty");
        return new ImageDetails(record, config, raw, manifest);
    }

    /// <summary>The annotations of an image's manifest and, when it was resolved through an index, of that index (the index wins).</summary>
    public async Task<IReadOnlyDictionary<string, string>> AnnotationsAsync(ImageDetails details, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(details);
        var merged = new Dictionary<string, string>(details.Manifest.Annotations ?? new Dictionary<string, string>(), StringComparer.Ordinal);
        if (details.Image.TargetDigest != details.Image.ManifestDigest)
        {
            var index = await ReadJsonAsync(details.Image.TargetDigest, OciJson.Default.ImageIndex, ct).ConfigureAwait(false);
            foreach (var (k, v) in index.Annotations ?? new Dictionary<string, string>())
            {
                merged[k] = v;
            }
        }

        return merged;
    }

    /// <summary>
    /// Records that <paramref name="holder"/> (a container) uses the snapshot chain of <paramref name="image"/>,
    /// under the GC lock, so a concurrent RemoveImage cannot collect the snapshots between lookup and lease.
    /// </summary>
    public async Task<ImageDetails> LeaseAsync(string holder, string image, CancellationToken ct)
    {
        using var shared = await _gcLock.ReadAsync(ct).ConfigureAwait(false);
        var details = await InspectAsync(image, ct).ConfigureAwait(false)
            ?? throw new CrestException(ErrorKind.NotFound, $"image {image} is not present on this node; pull it first (CreateContainer does not pull)");
        if (details.Image.ChainId is { } chain)
        {
            await metadata.AddSnapshotLeaseAsync(holder, chain, ct).ConfigureAwait(false);
        }

        return details;
    }

    /// <summary>Bytes and inodes used by the content store and the snapshots (ImageFsInfo).</summary>
    public static FilesystemUsage Usage(string root, params string[] trees)
    {
        long bytes = 0;
        long inodes = 0;
        foreach (var tree in trees)
        {
            var dir = new DirectoryInfo(tree);
            if (!dir.Exists)
            {
                continue;
            }

            inodes++;
            foreach (var entry in dir.EnumerateFileSystemInfos("*", new EnumerationOptions
            {
                RecurseSubdirectories = true,
                AttributesToSkip = 0,
                IgnoreInaccessible = true,
                ReturnSpecialDirectories = false,
            }))
            {
                inodes++;
                if (entry is FileInfo { LinkTarget: null } f)
                {
                    bytes += f.Length;
                }
            }
        }

        return new FilesystemUsage(root, bytes, inodes);
    }

    internal async Task<byte[]> ReadBlobAsync(Digest digest, CancellationToken ct)
    {
        await using var s = content.OpenRead(digest);
        using var ms = new MemoryStream();
        await s.CopyToAsync(ms, ct).ConfigureAwait(false);
        return ms.ToArray();
    }

    internal async Task<T> ReadJsonAsync<T>(Digest digest, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> type, CancellationToken ct)
    {
        var bytes = await ReadBlobAsync(digest, ct).ConfigureAwait(false);
        return ParseJson(bytes, type, $"blob {digest}");
    }

    internal static T ParseJson<T>(byte[] bytes, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> type, string what)
    {
        try
        {
            return JsonSerializer.Deserialize(bytes, type) ?? throw new CrestException(ErrorKind.InvalidArgument, $"{what} is empty JSON");
        }
        catch (JsonException e)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"{what} is not valid JSON of the expected shape: {e.Message}", e);
        }
    }

    /// <summary>chain(0) = diff(0); chain(i) = sha256(chain(i-1) + " " + diff(i)), as the OCI image spec defines.</summary>
    public static IReadOnlyList<string> ChainIds(IReadOnlyList<string> diffIds)
    {
        ArgumentNullException.ThrowIfNull(diffIds);
        var chains = new List<string>(diffIds.Count);
        foreach (var diff in diffIds)
        {
            chains.Add(chains.Count == 0 ? diff : Digest.Of(Encoding.ASCII.GetBytes($"{chains[^1]} {diff}")).ToString());
        }

        return chains;
    }

    private sealed class InflightPull
    {
        private readonly Lock _gate = new();
        private readonly List<Action<PullProgress>> _watchers = [];

        public TaskCompletionSource<ImageRecord> Result { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void Watch(Action<PullProgress>? watcher)
        {
            if (watcher is not null)
            {
                lock (_gate)
                {
                    _watchers.Add(watcher);
                }
            }
        }

        public void Unwatch(Action<PullProgress>? watcher)
        {
            if (watcher is not null)
            {
                lock (_gate)
                {
                    _watchers.Remove(watcher);
                }
            }
        }

        public void Report(PullProgress p)
        {
            Action<PullProgress>[] watchers;
            lock (_gate)
            {
                watchers = [.. _watchers];
            }

            foreach (var w in watchers)
            {
                w(p);
            }
        }
    }
}
