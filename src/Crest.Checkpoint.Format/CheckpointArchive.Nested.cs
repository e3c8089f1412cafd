using System.Formats.Tar;
using Crest.Core;

namespace Crest.Checkpoint.Format;

/// <summary>
/// A tar entry whose bytes are the uncompressed archive of <paramref name="Directory"/> (<see cref="CheckpointArchive.WriteAsync"/>),
/// made while the outer tar is written: a pod checkpoint's container archives streamed from the held work directories,
/// never written to a file. <paramref name="Length"/> comes from <see cref="CheckpointArchive.MeasureAsync"/>: a tar
/// header states its entry's size before the bytes.
/// </summary>
public sealed record NestedArchive(string EntryName, string Directory, long Length);

// The length of a directory's archive without reading its files, and the stream that writes that archive into an outer tar.
public static partial class CheckpointArchive
{
    /// <summary>
    /// The exact length of <see cref="WriteAsync"/>'s uncompressed archive of <paramref name="directory"/>, found by writing
    /// the same headers with each file's length in place of its bytes (no file is read). Valid while the directory's
    /// names, sizes and times stay as they are.
    /// </summary>
    public static async Task<long> MeasureAsync(string directory, CancellationToken ct)
    {
        var sink = new ByteCount();
        await using (var tar = new TarWriter(sink, TarEntryFormat.Pax, leaveOpen: true))
        {
            await WriteTreeAsync(tar, directory, lengthsOnly: true, ct).ConfigureAwait(false);
        }

        return sink.Length;
    }

    /// <summary>Counts what is written and keeps none of it; <see cref="Skip"/> counts bytes that are never made.</summary>
    private sealed class ByteCount : Stream
    {
        private long _length;

        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => _length;
        public override long Position { get => _length; set => throw new NotSupportedException(); }

        public void Skip(long bytes) => _length += bytes;

        public override void Write(byte[] buffer, int offset, int count) => _length += count;

        public override void Write(ReadOnlySpan<byte> buffer) => _length += buffer.Length;

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            _length += buffer.Length;
            return ValueTask.CompletedTask;
        }

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        {
            _length += count;
            return Task.CompletedTask;
        }

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
    }

    /// <summary>
    /// A file's data as the measurement sees it: its length only. TarWriter takes the entry's size from a seekable data
    /// stream's length and copies it into the archive stream, which here is a <see cref="ByteCount"/> that counts it unread.
    /// </summary>
    private sealed class LengthOnly(long length) : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => true;
        public override bool CanWrite => false;
        public override long Length => length;
        public override long Position { get => 0; set { } }

        public override async Task CopyToAsync(Stream destination, int bufferSize, CancellationToken cancellationToken)
        {
            if (destination is ByteCount count)
            {
                count.Skip(length);
                return;
            }

            // Not reached through TarWriter today; zeros of the same length keep any other path's count right.
            var zeros = new byte[Math.Min(length, 1 << 16)];
            for (var left = length; left > 0; left -= zeros.Length)
            {
                await destination.WriteAsync(zeros.AsMemory(0, (int)Math.Min(left, zeros.Length)), cancellationToken).ConfigureAwait(false);
            }
        }

        public override void CopyTo(Stream destination, int bufferSize) => CopyToAsync(destination, bufferSize, CancellationToken.None).GetAwaiter().GetResult();

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("a measured file's bytes are never read");
        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    /// <summary>
    /// A <see cref="NestedArchive"/> as an outer tar entry's data: TarWriter reads its announced length, then copies it
    /// into the outer archive, which is when the inner archive is made, straight into that stream.
    /// </summary>
    private sealed class NestedArchiveData(NestedArchive nested) : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => true;
        public override bool CanWrite => false;
        public override long Length => nested.Length;
        public override long Position { get => 0; set { } }

        public override async Task CopyToAsync(Stream destination, int bufferSize, CancellationToken cancellationToken)
        {
            var counted = new CountingWrites(destination);
            await CheckpointArchive.WriteAsync(nested.Directory, counted, ArchiveCompression.None, cancellationToken).ConfigureAwait(false);
            if (counted.Written != nested.Length)
            {
                // The outer header announced another size, so what follows would be misread: the transfer fails instead.
                throw new CrestException(ErrorKind.Internal,
                    $"the archive of {nested.Directory} came to {counted.Written} bytes where {nested.Length} were measured (did its files change?); the stream of {nested.EntryName} is broken off");
            }
        }

        public override void CopyTo(Stream destination, int bufferSize) => CopyToAsync(destination, bufferSize, CancellationToken.None).GetAwaiter().GetResult();

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("a nested archive is made only by copying it into its outer archive");
        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    /// <summary>Passes writes on to <paramref name="inner"/> (left open) and counts them.</summary>
    private sealed class CountingWrites(Stream inner) : Stream
    {
        public long Written { get; private set; }

        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => Written; set => throw new NotSupportedException(); }

        public override void Write(byte[] buffer, int offset, int count)
        {
            inner.Write(buffer, offset, count);
            Written += count;
        }

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            inner.Write(buffer);
            Written += buffer.Length;
        }

        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            await inner.WriteAsync(buffer, cancellationToken).ConfigureAwait(false);
            Written += buffer.Length;
        }

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override void Flush() => inner.Flush();
        public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
    }
}
