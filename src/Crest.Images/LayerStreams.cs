using System.IO.Compression;
using System.Security.Cryptography;
using Crest.Core;

namespace Crest.Images;

/// <summary>Layer compression, recognised by magic bytes rather than trusted from the media type.</summary>
public enum Compression
{
    None,
    Gzip,
    Zstd,
}

public static class LayerStreams
{
    /// <summary>Opens the uncompressed tar inside a layer blob, whatever its compression.</summary>
    public static Stream Decompress(Stream blob)
    {
        ArgumentNullException.ThrowIfNull(blob);
        var buffered = new BufferedStream(blob, 128 * 1024);
        var head = new byte[4];
        var n = ReadHead(buffered, head);
        var rest = new PrefixedStream(head.AsMemory(0, n), buffered);
        return Detect(head.AsSpan(0, n)) switch
        {
            Compression.Gzip => new GZipStream(rest, CompressionMode.Decompress),
            Compression.Zstd => new ZstdErrorsAsInvalidData(new ZstdSharp.DecompressionStream(rest)),
            _ => rest,
        };
    }

    public static Compression Detect(ReadOnlySpan<byte> head) => head switch
    {
        [0x1f, 0x8b, ..] => Compression.Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression.Zstd,
        _ => Compression.None,
    };

    private static int ReadHead(Stream s, byte[] head)
    {
        var n = 0;
        while (n < head.Length)
        {
            var r = s.Read(head, n, head.Length - n);
            if (r == 0)
            {
                break;
            }

            n += r;
        }

        return n;
    }

    /// <summary>Corrupt zstd data surfaces as <see cref="InvalidDataException"/>, as corrupt gzip does, so callers handle one type.</summary>
    private sealed class ZstdErrorsAsInvalidData(Stream source) : ReadOnlyStream
    {
        public override int Read(Span<byte> buffer)
        {
            try
            {
                return source.Read(buffer);
            }
            catch (ZstdSharp.ZstdException e)
            {
                throw new InvalidDataException($"the zstd stream is corrupt: {e.Message}", e);
            }
        }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            try
            {
                return await source.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
            }
            catch (ZstdSharp.ZstdException e)
            {
                throw new InvalidDataException($"the zstd stream is corrupt: {e.Message}", e);
            }
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                source.Dispose();
            }

            base.Dispose(disposing);
        }
    }

    /// <summary>A stream that gives back bytes already read, then the rest of the source.</summary>
    private sealed class PrefixedStream(ReadOnlyMemory<byte> prefix, Stream source) : ReadOnlyStream
    {
        private ReadOnlyMemory<byte> _prefix = prefix;

        public override int Read(Span<byte> buffer)
        {
            if (_prefix.Length > 0)
            {
                var n = Math.Min(buffer.Length, _prefix.Length);
                _prefix.Span[..n].CopyTo(buffer);
                _prefix = _prefix[n..];
                return n;
            }

            return source.Read(buffer);
        }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            if (_prefix.Length > 0)
            {
                return Read(buffer.Span);
            }

            return await source.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                source.Dispose();
            }

            base.Dispose(disposing);
        }
    }
}

/// <summary>Hashes everything read through it: the diff ID of an uncompressed layer, checked after unpacking.</summary>
public sealed class HashingReadStream(Stream inner) : ReadOnlyStream
{
    private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

    public long BytesRead { get; private set; }

    /// <summary>Reads to the end (tar readers stop at the end-of-archive blocks) and returns the digest of all bytes.</summary>
    public async Task<Digest> FinishAsync(CancellationToken ct)
    {
        var buffer = new byte[64 * 1024];
        while (await ReadAsync(buffer, ct).ConfigureAwait(false) > 0)
        {
        }

        return Digest.FromHash(_hash.GetHashAndReset());
    }

    public override int Read(Span<byte> buffer)
    {
        var n = inner.Read(buffer);
        _hash.AppendData(buffer[..n]);
        BytesRead += n;
        return n;
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        var n = await inner.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
        _hash.AppendData(buffer.Span[..n]);
        BytesRead += n;
        return n;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _hash.Dispose();
            inner.Dispose();
        }

        base.Dispose(disposing);
    }
}
