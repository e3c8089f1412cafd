using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Text;
using System.Threading.Channels;
using Crest.Linux;

namespace Crest.Daemon.Streaming;

/// <summary>
/// A SPDY/3.1 session on an upgraded HTTP/1.1 connection, as the kubelet's streaming server and client-go's
/// spdystream speak it: the client opens streams (SYN_STREAM with headers such as streamtype), the server replies
/// (SYN_REPLY) and both sides send DATA frames, FIN ending a direction. Header blocks are compressed with one zlib
/// stream per direction primed with SPDY's dictionary. Flow control (WINDOW_UPDATE) is ignored, as spdystream does.
/// </summary>
internal sealed class SpdyConnection : IDisposable
{
    private const int MaxDataFrame = 32 * 1024;
    private readonly Stream _transport;
    private readonly ZlibInflater _inflater = new(HeaderDictionary);
    private readonly ZlibDeflater _deflater = new(HeaderDictionary);
    private readonly SemaphoreSlim _write = new(1, 1);
    private readonly ConcurrentDictionary<uint, SpdyStream> _streams = new();
    private readonly Channel<SpdyStream> _incoming = Channel.CreateUnbounded<SpdyStream>();

    public SpdyConnection(Stream transport) => _transport = transport;

    /// <summary>Streams the client opened, in order; completes when the connection ends.</summary>
    public ChannelReader<SpdyStream> Incoming => _incoming.Reader;

    /// <summary>Reads frames until the client closes, sends GOAWAY, or <paramref name="ct"/> fires.</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        var header = new byte[8];
        try
        {
            while (true)
            {
                await _transport.ReadExactlyAsync(header, ct);
                var length = (header[5] << 16) | (header[6] << 8) | header[7];
                var payload = new byte[length];
                await _transport.ReadExactlyAsync(payload, ct);
                var flags = header[4];
                if ((header[0] & 0x80) == 0)
                {
                    var id = BinaryPrimitives.ReadUInt32BigEndian(header) & 0x7fffffff;
                    if (_streams.TryGetValue(id, out var target))
                    {
                        // Waits while the stream's reader is behind: the only back-pressure SPDY gets here.
                        await target.DeliverAsync(payload, fin: (flags & 1) != 0, ct);
                    }

                    continue;
                }

                var type = (header[2] << 8) | header[3];
                if (!await HandleControlAsync(type, flags, header, payload, ct))
                {
                    return;
                }
            }
        }
        catch (Exception e) when (e is EndOfStreamException or IOException or OperationCanceledException or ObjectDisposedException)
        {
        }
        finally
        {
            _incoming.Writer.TryComplete();
            foreach (var s in _streams.Values)
            {
                s.Finish();
            }
        }
    }

    private async Task<bool> HandleControlAsync(int type, byte flags, byte[] header, byte[] payload, CancellationToken ct)
    {
        switch (type)
        {
            case 1 when payload.Length >= 10: // SYN_STREAM
                var id = BinaryPrimitives.ReadUInt32BigEndian(payload) & 0x7fffffff;
                var stream = new SpdyStream(this, id, DecodeHeaders(_inflater.Inflate(payload.AsSpan(10))));
                _streams[id] = stream;
                if ((flags & 1) != 0)
                {
                    stream.Finish();
                }

                await _incoming.Writer.WriteAsync(stream, ct);
                return true;
            case 2 or 8 when payload.Length >= 4: // SYN_REPLY, HEADERS: inflated only to keep the zlib stream in step
                _ = _inflater.Inflate(payload.AsSpan(4));
                return true;
            case 3 when payload.Length >= 4: // RST_STREAM
                if (_streams.TryGetValue(BinaryPrimitives.ReadUInt32BigEndian(payload) & 0x7fffffff, out var reset))
                {
                    reset.Finish();
                }

                return true;
            case 6: // PING: echoed
                await WriteFrameAsync([.. header, .. payload], ct);
                return true;
            case 7: // GOAWAY
                return false;
            default: // SETTINGS, WINDOW_UPDATE, anything newer
                return true;
        }
    }

    public Task ReplyAsync(SpdyStream stream, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(stream);
        byte[] block;
        lock (_deflater)
        {
            block = _deflater.Deflate(EncodeHeaders([]));
        }

        var frame = new byte[12 + block.Length];
        ControlHeader(frame, type: 2, flags: 0, length: 4 + block.Length);
        BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(8), stream.Id);
        block.CopyTo(frame, 12);
        return WriteFrameAsync(frame, ct);
    }

    public async Task WriteDataAsync(uint id, ReadOnlyMemory<byte> data, bool fin, CancellationToken ct)
    {
        do
        {
            var chunk = data[..Math.Min(data.Length, MaxDataFrame)];
            data = data[chunk.Length..];
            var frame = new byte[8 + chunk.Length];
            BinaryPrimitives.WriteUInt32BigEndian(frame, id & 0x7fffffff);
            frame[4] = (byte)(fin && data.IsEmpty ? 1 : 0);
            frame[5] = (byte)(chunk.Length >> 16);
            frame[6] = (byte)(chunk.Length >> 8);
            frame[7] = (byte)chunk.Length;
            chunk.CopyTo(frame.AsMemory(8));
            await WriteFrameAsync(frame, ct);
        }
        while (!data.IsEmpty);
    }

    public Task GoAwayAsync(CancellationToken ct)
    {
        var frame = new byte[16];
        ControlHeader(frame, type: 7, flags: 0, length: 8);
        return WriteFrameAsync(frame, ct);
    }

    private async Task WriteFrameAsync(byte[] frame, CancellationToken ct)
    {
        await _write.WaitAsync(ct);
        try
        {
            await _transport.WriteAsync(frame, ct);
            await _transport.FlushAsync(ct);
        }
        finally
        {
            _write.Release();
        }
    }

    private static void ControlHeader(byte[] frame, int type, byte flags, int length)
    {
        frame[0] = 0x80;
        frame[1] = 3;
        frame[2] = (byte)(type >> 8);
        frame[3] = (byte)type;
        frame[4] = flags;
        frame[5] = (byte)(length >> 16);
        frame[6] = (byte)(length >> 8);
        frame[7] = (byte)length;
    }

    /// <summary>A SPDY/3 name/value block: a count, then length-prefixed names and values (32-bit big-endian).</summary>
    internal static byte[] EncodeHeaders(IReadOnlyList<(string Name, string Value)> headers)
    {
        using var block = new MemoryStream();
        Span<byte> n = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(n, headers.Count);
        block.Write(n);
        foreach (var (name, value) in headers)
        {
            foreach (var text in new[] { name.ToLowerInvariant(), value })
            {
                var bytes = Encoding.UTF8.GetBytes(text);
                BinaryPrimitives.WriteInt32BigEndian(n, bytes.Length);
                block.Write(n);
                block.Write(bytes);
            }
        }

        return block.ToArray();
    }

    /// <summary>Names lower-cased; of a NUL-separated multi-value, the first.</summary>
    internal static Dictionary<string, string> DecodeHeaders(ReadOnlySpan<byte> block)
    {
        var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        var count = ReadLength(ref block);
        for (var i = 0; i < count; i++)
        {
            var name = Encoding.UTF8.GetString(Take(ref block, ReadLength(ref block)));
            var value = Encoding.UTF8.GetString(Take(ref block, ReadLength(ref block)));
            headers[name.ToLowerInvariant()] = value.Split('\0')[0];
        }

        return headers;
    }

    private static int ReadLength(ref ReadOnlySpan<byte> block)
    {
        var value = BinaryPrimitives.ReadInt32BigEndian(Take(ref block, 4));
        return value is >= 0 and <= 1 << 20 ? value : throw new InvalidDataException($"a SPDY header block length of {value}");
    }

    private static ReadOnlySpan<byte> Take(ref ReadOnlySpan<byte> block, int n)
    {
        if (block.Length < n)
        {
            throw new InvalidDataException("a SPDY header block ends early");
        }

        var taken = block[..n];
        block = block[n..];
        return taken;
    }

    public void Dispose()
    {
        _inflater.Dispose();
        _deflater.Dispose();
        _write.Dispose();
    }

    /// <summary>SPDY/3's zlib dictionary (draft 3, section 2.6.10.1): length-prefixed header names and values, then a tail.</summary>
    internal static readonly byte[] HeaderDictionary = BuildDictionary();

    private static byte[] BuildDictionary()
    {
        string[] words =
        [
        "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding",
        "accept-language", "accept-ranges", "age", "allow", "authorization", "cache-control", "connection",
        "content-base", "content-encoding", "content-language", "content-length", "content-location", "content-md5",
        "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host", "if-match",
        "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
        "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer", "retry-after",
        "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
        "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie",
        "keep-alive", "origin"
        ];
        const string Tail = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505203 Non-Au"
        + "thoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidd"
        + "en404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr Ma"
        + "y Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,imag"
        + "e/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicpri"
        + "vatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
        using var dictionary = new MemoryStream();
        Span<byte> n = stackalloc byte[4];
        foreach (var word in words)
        {
            BinaryPrimitives.WriteInt32BigEndian(n, word.Length);
            dictionary.Write(n);
            dictionary.Write(Encoding.ASCII.GetBytes(word));
        }

        dictionary.Write(Encoding.ASCII.GetBytes(Tail));
        return dictionary.ToArray();
    }
}

/// <summary>One SPDY stream the client opened: its headers, and what it sends until FIN.</summary>
internal sealed class SpdyStream(SpdyConnection connection, uint id, IReadOnlyDictionary<string, string> headers)
{
    private readonly Channel<byte[]> _inbound = Channel.CreateBounded<byte[]>(new BoundedChannelOptions(256) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });

    public uint Id { get; } = id;

    public IReadOnlyDictionary<string, string> Headers { get; } = headers;

    public string Header(string name) => Headers.TryGetValue(name, out var v) ? v : "";

    internal async ValueTask DeliverAsync(byte[] data, bool fin, CancellationToken ct)
    {
        if (data.Length > 0)
        {
            try
            {
                await _inbound.Writer.WriteAsync(data, ct);
            }
            catch (ChannelClosedException)
            {
                // Data after FIN or a reset: dropped.
            }
        }

        if (fin)
        {
            Finish();
        }
    }

    /// <summary>The client will send no more on this stream (FIN, reset, or the connection ended).</summary>
    internal void Finish() => _inbound.Writer.TryComplete();

    /// <summary>The next bytes the client sent; null once it finished (FIN, reset or a closed connection).</summary>
    public async ValueTask<byte[]?> ReadAsync(CancellationToken ct) =>
        await _inbound.Reader.WaitToReadAsync(ct) && _inbound.Reader.TryRead(out var data) ? data : null;

    public Task WriteAsync(ReadOnlyMemory<byte> data, CancellationToken ct) => connection.WriteDataAsync(Id, data, fin: false, ct);

    public Task CloseAsync(CancellationToken ct) => connection.WriteDataAsync(Id, ReadOnlyMemory<byte>.Empty, fin: true, ct);
}
