using Crest.Images;

namespace Crest.Checkpoint;

/// <summary>
/// The chunks a migration peer sends, read as a stream (to unpack an archive as it arrives), under a byte cap.
/// <see cref="OpenAsync"/> waits for the first chunk, so the synchronous read of a decompressor's magic bytes is served
/// from it; later reads go through the asynchronous path.
/// </summary>
internal sealed class ChunkReadStream : ReadOnlyStream
{
    private readonly IAsyncEnumerator<ReadOnlyMemory<byte>> _chunks;
    private readonly long _cap;
    private readonly Func<Exception> _tooLarge;
    private ReadOnlyMemory<byte> _current;
    private bool _ended;

    private ChunkReadStream(IAsyncEnumerator<ReadOnlyMemory<byte>> chunks, long cap, Func<Exception> tooLarge)
    {
        _chunks = chunks;
        _cap = cap;
        _tooLarge = tooLarge;
    }

    /// <summary>Bytes the sender sent so far (read or not).</summary>
    public long BytesReceived { get; private set; }

    /// <summary>A stream over <paramref name="chunks"/>; past <paramref name="cap"/> bytes received, <paramref name="tooLarge"/> is thrown.</summary>
    public static async Task<ChunkReadStream> OpenAsync(IAsyncEnumerable<ReadOnlyMemory<byte>> chunks, long cap, Func<Exception> tooLarge, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(chunks);
        var stream = new ChunkReadStream(chunks.GetAsyncEnumerator(ct), cap, tooLarge);
        await stream.NextChunkAsync().ConfigureAwait(false);
        return stream;
    }

    public override int Read(Span<byte> buffer)
    {
        if (_current.IsEmpty && !_ended)
        {
            // Only a decompressor's first peek reads synchronously, and OpenAsync already holds a chunk for it.
            NextChunkAsync().AsTask().GetAwaiter().GetResult();
        }

        return Take(buffer);
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (_current.IsEmpty && !_ended)
        {
            await NextChunkAsync().ConfigureAwait(false);
        }

        return Take(buffer.Span);
    }

    /// <summary>Reads and counts what the sender still sends after the reader stopped (a tar's trailing padding), within the cap.</summary>
    public async Task DrainAsync()
    {
        _current = default;
        while (!_ended)
        {
            await NextChunkAsync().ConfigureAwait(false);
            _current = default;
        }
    }

    private int Take(Span<byte> buffer)
    {
        var n = Math.Min(buffer.Length, _current.Length);
        _current.Span[..n].CopyTo(buffer);
        _current = _current[n..];
        return n;
    }

    private async ValueTask NextChunkAsync()
    {
        while (!_ended)
        {
            if (!await _chunks.MoveNextAsync().ConfigureAwait(false))
            {
                _ended = true;
                return;
            }

            BytesReceived += _chunks.Current.Length;
            if (BytesReceived > _cap)
            {
                throw _tooLarge();
            }

            if (!_chunks.Current.IsEmpty)
            {
                _current = _chunks.Current;
                return;
            }
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _chunks.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }

        base.Dispose(disposing);
    }

    public override async ValueTask DisposeAsync()
    {
        await _chunks.DisposeAsync().ConfigureAwait(false);
        await base.DisposeAsync().ConfigureAwait(false);
    }
}
