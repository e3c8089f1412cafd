using Crest.Core;

namespace Crest.Images;

/// <summary>Content-addressed blobs. Every byte that enters is verified against its digest and size before it is visible.</summary>
public interface IContentStore
{
    bool Exists(Digest digest);

    /// <summary>The size of a stored blob, or null.</summary>
    long? SizeOf(Digest digest);

    /// <summary>Opens a stored blob for reading; NotFound when it is not stored.</summary>
    Stream OpenRead(Digest digest);

    /// <summary>
    /// Copies <paramref name="source"/> in, verifying it is exactly <paramref name="expectedSize"/> bytes (when
    /// not null) with digest <paramref name="expected"/>. On any failure nothing is stored and the error names the blob.
    /// </summary>
    Task IngestAsync(Stream source, Digest expected, long? expectedSize, Action<long>? progress, CancellationToken ct);

    /// <summary>Stores bytes made locally (a manifest Crest wrote) and returns their digest.</summary>
    Task<Digest> WriteAsync(ReadOnlyMemory<byte> content, CancellationToken ct);

    /// <summary>Stores a stream of unknown digest (a layer Crest builds) and returns its digest and size.</summary>
    Task<(Digest Digest, long Size)> WriteStreamAsync(Stream source, CancellationToken ct);

    IEnumerable<Digest> List();

    void Delete(Digest digest);

    /// <summary>Removes ingest files left by interrupted downloads.</summary>
    void CleanIngest();
}
