using Crest.Core;
using Crest.Api.V1;
using Google.Protobuf;
using Grpc.Core;

namespace Crest.Daemon.Cri;

/// <summary>
/// A write-only stream that sends what is written to it as <see cref="ArchiveChunk"/> messages of at most
/// <see cref="ChunkBytes"/>, so an archive made as it goes streams without a file between; <see cref="FinishAsync"/>
/// ends it with the SHA-256 trailer of everything sent.
/// </summary>
internal sealed class ArchiveChunkStream(IServerStreamWriter<ArchiveChunk> messages, CancellationToken ct) : Stream
{
    /// <summary>
    /// 64 KiB: each chunk a client receives is a new array, and one of 85,000 bytes or more is allocated on the large
    /// object heap, whose churn kept the relaying client's background GC busy for a fifth of a gigabyte's transfer.
    /// </summary>
    public const int ChunkBytes = 64 << 10;

    private readonly byte[] _buffer = new byte[ChunkBytes];
    private readonly StreamDigest _digest = new();
    private int _filled;

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (!buffer.IsEmpty)
        {
            var n = Math.Min(buffer.Length, ChunkBytes - _filled);
            buffer[..n].CopyTo(_buffer.AsMemory(_filled));
            _filled += n;
            buffer = buffer[n..];
            if (_filled == ChunkBytes)
            {
                await SendAsync().ConfigureAwait(false);
            }
        }
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <summary>Sends what is buffered; call once the archive is complete.</summary>
    public override async Task FlushAsync(CancellationToken cancellationToken)
    {
        if (_filled > 0)
        {
            await SendAsync().ConfigureAwait(false);
        }
    }

    public override void Flush() => FlushAsync(CancellationToken.None).GetAwaiter().GetResult();

    /// <summary>Sends what is buffered, then the trailer: the SHA-256 of all the data sent. Call once the archive is complete.</summary>
    public async Task FinishAsync()
    {
        await FlushAsync(ct).ConfigureAwait(false);
        await messages.WriteAsync(new ArchiveChunk { Sha256 = ByteString.CopyFrom(_digest.Finish()) }, ct).ConfigureAwait(false);
    }

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _digest.Dispose();
        }

        base.Dispose(disposing);
    }

    private async Task SendAsync()
    {
        // The message owns a copy: the buffer is filled again while it is sent.
        _digest.Append(_buffer.AsSpan(0, _filled));
        await messages.WriteAsync(new ArchiveChunk { Data = ByteString.CopyFrom(_buffer, 0, _filled) }, ct).ConfigureAwait(false);
        _filled = 0;
    }
}
