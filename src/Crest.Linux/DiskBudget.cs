namespace Crest.Linux;

/// <summary>
/// What a filesystem can take from one extraction or download: its free bytes when the work began, less a reserve
/// that must stay free for everything else on the node. <paramref name="ReserveSetting"/> names the setting in errors.
/// </summary>
public sealed record DiskBudget(string Filesystem, long FreeBytes, long ReserveBytes, string ReserveSetting)
{
    /// <summary>Bytes that may still be written.</summary>
    public long Available => Math.Max(0, FreeBytes - ReserveBytes);

    /// <summary>Free bytes of the filesystem holding <paramref name="path"/> for an unprivileged writer (statvfs f_bavail).</summary>
    public static long FreeBytesOf(string path) => new DriveInfo(path).AvailableFreeSpace;

    /// <summary>Measures <paramref name="filesystem"/> now, through <paramref name="probe"/> (tests inject a small disk).</summary>
    public static DiskBudget Measure(string filesystem, long reserveBytes, string reserveSetting, Func<string, long>? probe = null) =>
        new(filesystem, (probe ?? FreeBytesOf)(filesystem), reserveBytes, reserveSetting);

    /// <summary>"the N bytes free on /x after [s] disk_reserve_bytes = R", for errors.</summary>
    public string Describe() => $"the {Available} bytes free on {Filesystem} after {ReserveSetting} = {ReserveBytes}";
}

/// <summary>
/// Counts the bytes a consumer read through it: the compressed side of a decompressor, so an extraction can compare
/// what it wrote with what it was given (the expansion ratio of a decompression bomb).
/// </summary>
public sealed class CountingReadStream(Stream inner, bool leaveOpen = false) : Stream
{
    public long BytesRead { get; private set; }

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => false;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => BytesRead;
        set => throw new NotSupportedException();
    }

    public override int Read(byte[] buffer, int offset, int count) => Count(inner.Read(buffer, offset, count));

    public override int Read(Span<byte> buffer) => Count(inner.Read(buffer));

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        Count(await inner.ReadAsync(buffer, cancellationToken).ConfigureAwait(false));

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing && !leaveOpen)
        {
            inner.Dispose();
        }

        base.Dispose(disposing);
    }

    public override async ValueTask DisposeAsync()
    {
        if (!leaveOpen)
        {
            await inner.DisposeAsync().ConfigureAwait(false);
        }

        await base.DisposeAsync().ConfigureAwait(false);
    }

    private int Count(int n)
    {
        BytesRead += n;
        return n;
    }
}
