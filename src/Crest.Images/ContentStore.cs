using System.Security.Cryptography;
using Crest.Core;

namespace Crest.Images;

/// <summary>
/// Blobs under &lt;root&gt;/blobs/sha256/&lt;hex&gt;. Downloads stream into &lt;root&gt;/ingest/ while hashing and
/// counting, and are renamed into place only when digest and size match, so a reader never sees a partial blob.
/// </summary>
public sealed class ContentStore : IContentStore
{
    private readonly string _blobs;
    private readonly string _ingest;

    public ContentStore(string root)
    {
        Root = root;
        _blobs = Path.Combine(root, "blobs", "sha256");
        _ingest = Path.Combine(root, "ingest");
        Directory.CreateDirectory(_blobs);
        Directory.CreateDirectory(_ingest);
    }

    public string Root { get; }

    public bool Exists(Digest digest) => File.Exists(PathOf(digest));

    public long? SizeOf(Digest digest)
    {
        var info = new FileInfo(PathOf(digest));
        return info.Exists ? info.Length : null;
    }

    public Stream OpenRead(Digest digest)
    {
        try
        {
            return new FileStream(PathOf(digest), FileMode.Open, FileAccess.Read, FileShare.Read, 128 * 1024, FileOptions.Asynchronous);
        }
        catch (FileNotFoundException e)
        {
            throw new CrestException(ErrorKind.NotFound, $"blob {digest} is not in the content store {Root}", e);
        }
    }

    public async Task IngestAsync(Stream source, Digest expected, long? expectedSize, Action<long>? progress, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (Exists(expected))
        {
            return;
        }

        var temp = Path.Combine(_ingest, $"{expected.Hex}.{Guid.NewGuid():N}");
        try
        {
            var (actual, total) = await CopyHashingAsync(source, temp, expected.ToString(), expectedSize, progress, ct).ConfigureAwait(false);
            if (expectedSize is { } size && total != size)
            {
                throw new CrestException(ErrorKind.Unavailable, $"blob {expected}: got {total} bytes, its descriptor declares {size}; the transfer was cut short");
            }

            if (actual != expected)
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"blob {expected} failed verification: its content hashes to {actual}; the source served the wrong or corrupt bytes");
            }

            File.Move(temp, PathOf(expected), overwrite: true);
        }
        finally
        {
            File.Delete(temp);
        }
    }

    public async Task<Digest> WriteAsync(ReadOnlyMemory<byte> content, CancellationToken ct)
    {
        var digest = Digest.Of(content.Span);
        using var stream = new MemoryStream(content.ToArray(), writable: false);
        await IngestAsync(stream, digest, content.Length, null, ct).ConfigureAwait(false);
        return digest;
    }

    public async Task<(Digest Digest, long Size)> WriteStreamAsync(Stream source, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(source);
        var temp = Path.Combine(_ingest, $"local.{Guid.NewGuid():N}");
        try
        {
            var (digest, total) = await CopyHashingAsync(source, temp, "local content", null, null, ct).ConfigureAwait(false);
            File.Move(temp, PathOf(digest), overwrite: true);
            return (digest, total);
        }
        finally
        {
            File.Delete(temp);
        }
    }

    /// <summary>Copies a stream into a new file while hashing and counting it, stopping as soon as it exceeds <paramref name="maxSize"/>.</summary>
    private static async Task<(Digest Digest, long Size)> CopyHashingAsync(Stream source, string path, string what, long? maxSize, Action<long>? progress, CancellationToken ct)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long total = 0;
        await using var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 0, FileOptions.Asynchronous);
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(256 * 1024);
        try
        {
            int n;
            while ((n = await source.ReadAsync(buffer, ct).ConfigureAwait(false)) > 0)
            {
                total += n;
                if (maxSize is { } max && total > max)
                {
                    throw new CrestException(ErrorKind.InvalidArgument,
                        $"blob {what} is larger than the {max} bytes its descriptor declares; the source is corrupt or malicious");
                }

                hash.AppendData(buffer, 0, n);
                await file.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                progress?.Invoke(total);
                if (maxSize is { } declared && total < declared)
                {
                    CrashPoints.Hit(CrashPoints.ImagePullIngesting);
                }
            }
        }
        catch (IOException e) when (e is not FileNotFoundException)
        {
            throw new CrestException(ErrorKind.Unavailable, $"blob {what}: the transfer broke after {total} bytes: {e.Message}", e);
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }

        await file.FlushAsync(ct).ConfigureAwait(false);
        return (Digest.FromHash(hash.GetHashAndReset()), total);
    }

    public IEnumerable<Digest> List()
    {
        foreach (var file in Directory.EnumerateFiles(_blobs))
        {
            if (Digest.TryParseHex(Path.GetFileName(file), out var d))
            {
                yield return d;
            }
        }
    }

    public void Delete(Digest digest) => File.Delete(PathOf(digest));

    public void CleanIngest()
    {
        foreach (var file in Directory.EnumerateFiles(_ingest))
        {
            File.Delete(file);
        }
    }

    private string PathOf(Digest digest) => Path.Combine(_blobs, digest.Hex);
}
