namespace Crest.Core;

/// <summary>An image as Crest stores it. The ID is the digest of its config, as in containerd and CRI-O.</summary>
/// <param name="Id">config digest</param>
/// <param name="ManifestDigest">the platform manifest the image was unpacked from</param>
/// <param name="TargetDigest">what the reference resolved to: an index or the manifest itself (repo digests name this)</param>
/// <param name="TargetMediaType">the media type of <paramref name="TargetDigest"/></param>
/// <param name="ChainId">chain ID of the top layer: the snapshot a container's rootfs sits on (null for an image with no layers)</param>
/// <param name="Size">bytes of config and layers as stored (compressed), what crictl shows</param>
/// <param name="RepoTags">name:tag references</param>
/// <param name="RepoDigests">name@digest references</param>
/// <param name="Blobs">every blob the image needs: index, manifest, config, layers</param>
/// <param name="LayerChainIds">chain IDs of every layer, bottom first</param>
public sealed record ImageRecord(
    Digest Id,
    Digest ManifestDigest,
    Digest TargetDigest,
    string TargetMediaType,
    string? ChainId,
    long Size,
    DateTimeOffset CreatedAt,
    IReadOnlyList<string> RepoTags,
    IReadOnlyList<string> RepoDigests,
    IReadOnlyList<Digest> Blobs,
    IReadOnlyList<string> LayerChainIds);

/// <summary>A committed, read-only snapshot: one unpacked layer on top of its parent chain.</summary>
public sealed record SnapshotRecord(string Key, string Directory, string? Parent, long Size, DateTimeOffset CreatedAt);

/// <summary>Seam over where image and snapshot records live (SQLite in crestd, memory in unit tests).</summary>
public interface IImageMetadataStore
{
    Task<ImageRecord?> GetImageAsync(Digest id, CancellationToken ct);

    /// <summary>The image a tag or digest reference (fully normalised) names, or null.</summary>
    Task<Digest?> ResolveReferenceAsync(string reference, CancellationToken ct);

    Task<IReadOnlyList<ImageRecord>> ListImagesAsync(CancellationToken ct);

    /// <summary>Stores the image and points its references at it, moving a tag away from any image that had it.</summary>
    Task PutImageAsync(ImageRecord image, CancellationToken ct);

    /// <summary>Removes the image and all its references; false when there was none.</summary>
    Task<bool> DeleteImageAsync(Digest id, CancellationToken ct);

    Task<SnapshotRecord?> GetSnapshotAsync(string key, CancellationToken ct);

    Task<IReadOnlyList<SnapshotRecord>> ListSnapshotsAsync(CancellationToken ct);

    /// <summary>Records a committed snapshot; false if one with this key already exists (a concurrent unpack won).</summary>
    Task<bool> AddSnapshotAsync(SnapshotRecord snapshot, CancellationToken ct);

    Task DeleteSnapshotAsync(string key, CancellationToken ct);

    /// <summary>Marks a snapshot as used by <paramref name="holder"/> (a container): garbage collection keeps it.</summary>
    Task AddSnapshotLeaseAsync(string holder, string key, CancellationToken ct);

    Task RemoveSnapshotLeasesAsync(string holder, CancellationToken ct);

    Task<IReadOnlyList<string>> LeasedSnapshotsAsync(CancellationToken ct);
}
