using System.Collections.Concurrent;
using Crest.Core;
using Crest.Images;

namespace Crest.TestKit;

/// <summary>An in-memory <see cref="IContentStore"/> with the same verification rules: the fake behind the content seam.</summary>
public sealed class MemoryContentStore : IContentStore
{
    private readonly ConcurrentDictionary<Digest, byte[]> _blobs = new();

    public bool Exists(Digest digest) => _blobs.ContainsKey(digest);

    public long? SizeOf(Digest digest) => _blobs.TryGetValue(digest, out var b) ? b.Length : null;

    public Stream OpenRead(Digest digest) => _blobs.TryGetValue(digest, out var b)
        ? new MemoryStream(b, writable: false)
        : throw new CrestException(ErrorKind.NotFound, $"blob {digest} is not in the content store");

    public async Task IngestAsync(Stream source, Digest expected, long? expectedSize, Action<long>? progress, CancellationToken ct)
    {
        using var ms = new MemoryStream();
        var buffer = new byte[64 * 1024];
        int n;
        while ((n = await source.ReadAsync(buffer, ct)) > 0)
        {
            ms.Write(buffer, 0, n);
            if (expectedSize is { } max && ms.Length > max)
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"blob {expected} is larger than the {max} bytes its descriptor declares");
            }

            progress?.Invoke(ms.Length);
        }

        if (expectedSize is { } size && ms.Length != size)
        {
            throw new CrestException(ErrorKind.Unavailable, $"blob {expected}: got {ms.Length} bytes, its descriptor declares {size}");
        }

        var bytes = ms.ToArray();
        if (Digest.Of(bytes) != expected)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"blob {expected} failed verification");
        }

        _blobs[expected] = bytes;
    }

    public Task<Digest> WriteAsync(ReadOnlyMemory<byte> content, CancellationToken ct)
    {
        var d = Digest.Of(content.Span);
        _blobs[d] = content.ToArray();
        return Task.FromResult(d);
    }

    public async Task<(Digest Digest, long Size)> WriteStreamAsync(Stream source, CancellationToken ct)
    {
        using var ms = new MemoryStream();
        await source.CopyToAsync(ms, ct);
        var d = await WriteAsync(ms.ToArray(), ct);
        return (d, ms.Length);
    }

    public IEnumerable<Digest> List() => _blobs.Keys.ToList();

    public void Delete(Digest digest) => _blobs.TryRemove(digest, out _);

    public void CleanIngest()
    {
    }
}
