using Crest.Core;

namespace Crest.Linux;

/// <summary>
/// The bytes Crest's own writers are putting on each filesystem while they run, so that pulls, layer unpacks and
/// restores that overlap in time do not each count the same free space as theirs. One ledger serves the whole daemon
/// (filesystems are told apart by device number, so the content store, the snapshots and the root share one account
/// when they share a disk). An account lives while a budget on it is open.
/// <para>
/// A budget measures free space once, when it opens. From then on it subtracts what the other budgets on the same
/// filesystem wrote since (<see cref="DiskBudget.TryTake"/>) and what they still hold for downloads they declared
/// (<see cref="DiskBudget.TryHold"/>). What other programs write meanwhile is not seen; the reserve is for them.
/// </para>
/// </summary>
public sealed class DiskLedger
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, Account> _accounts = new(StringComparer.Ordinal);

    /// <summary>The ledger of the daemon's filesystems; options default to it, tests that fake free space make their own.</summary>
    public static DiskLedger Shared { get; } = new();

    /// <summary>Accounts with an open budget (tests check that budgets are closed).</summary>
    public int OpenAccounts
    {
        get
        {
            lock (_lock)
            {
                return _accounts.Count;
            }
        }
    }

    /// <summary>
    /// Opens a budget on the filesystem of <paramref name="filesystem"/>: its free bytes now (through
    /// <paramref name="probe"/>, which tests replace), less <paramref name="reserveBytes"/>. The holds of
    /// <paramref name="sameOperation"/> (the pull a layer unpack belongs to) are not counted against it.
    /// </summary>
    public DiskBudget Open(string filesystem, long reserveBytes, string reserveSetting, Func<string, long>? probe = null, DiskBudget? sameOperation = null)
    {
        var key = KeyOf(filesystem);
        var free = (probe ?? DiskBudget.FreeBytesOf)(filesystem);
        lock (_lock)
        {
            if (!_accounts.TryGetValue(key, out var account))
            {
                account = new Account(key);
                _accounts.Add(key, account);
            }

            account.Budgets++;
            return new DiskBudget(this, account, filesystem, free, reserveBytes, reserveSetting, account.Taken,
                sameOperation?.AccountKey == key ? sameOperation : null);
        }
    }

    internal Lock Sync => _lock;

    internal void Close(Account account, long held)
    {
        lock (_lock)
        {
            account.Held -= held;
            if (--account.Budgets == 0)
            {
                _accounts.Remove(account.Key);
            }
        }
    }

    /// <summary>"major:minor" of the filesystem holding <paramref name="path"/>, or the path when it cannot be read.</summary>
    private static unsafe string KeyOf(string path)
    {
        // statx(AT_FDCWD, path, 0, STATX_BASIC_STATS): stx_dev_major at 136, stx_dev_minor at 140.
        var buffer = stackalloc byte[256];
        return Interop.StatX(-100, path, 0, 0x7ff, buffer) == 0
            ? $"{*(uint*)(buffer + 136)}:{*(uint*)(buffer + 140)}"
            : path;
    }

    internal sealed class Account(string key)
    {
        public string Key { get; } = key;

        /// <summary>Every byte taken on this filesystem since the account opened.</summary>
        public long Taken { get; set; }

        /// <summary>Bytes declared by downloads that are still running.</summary>
        public long Held { get; set; }

        public int Budgets { get; set; }
    }
}

/// <summary>
/// What a filesystem can take from one extraction or download: its free bytes when the budget opened, less a reserve
/// that must stay free for everything else on the node, less what other Crest writers took or hold on it since
/// (<see cref="DiskLedger"/>). <see cref="ReserveSetting"/> names the setting in errors. Dispose it when the work ends.
/// </summary>
public sealed class DiskBudget : IDisposable
{
    private readonly DiskLedger _ledger;
    private readonly DiskLedger.Account _account;
    private readonly long _takenByAllAtOpen;
    private readonly DiskBudget? _sameOperation;
    private long _taken;
    private long _held;
    private bool _closed;

    internal DiskBudget(DiskLedger ledger, DiskLedger.Account account, string filesystem, long freeBytes, long reserveBytes, string reserveSetting,
        long takenByAllAtOpen, DiskBudget? sameOperation)
    {
        _ledger = ledger;
        _account = account;
        Filesystem = filesystem;
        FreeBytes = freeBytes;
        ReserveBytes = reserveBytes;
        ReserveSetting = reserveSetting;
        _takenByAllAtOpen = takenByAllAtOpen;
        _sameOperation = sameOperation;
    }

    public string Filesystem { get; }

    /// <summary>Free bytes when the budget opened.</summary>
    public long FreeBytes { get; }

    public long ReserveBytes { get; }

    public string ReserveSetting { get; }

    internal string AccountKey => _account.Key;

    /// <summary>What this budget may write in all: free bytes less the reserve, less what other writers took or hold since it opened.</summary>
    public long Limit
    {
        get
        {
            lock (_ledger.Sync)
            {
                return LimitLocked();
            }
        }
    }

    /// <summary>Bytes that may still be written through this budget.</summary>
    public long Available
    {
        get
        {
            lock (_ledger.Sync)
            {
                return Math.Max(0, LimitLocked() - _taken - _held);
            }
        }
    }

    /// <summary>Bytes this budget has taken so far.</summary>
    public long Taken
    {
        get
        {
            lock (_ledger.Sync)
            {
                return _taken;
            }
        }
    }

    /// <summary>Free bytes of the filesystem holding <paramref name="path"/> for an unprivileged writer (statvfs f_bavail).</summary>
    public static long FreeBytesOf(string path) => new DriveInfo(path).AvailableFreeSpace;

    /// <summary>A budget of its own, on a ledger of its own: a single check with nothing else to share the disk with.</summary>
    public static DiskBudget Measure(string filesystem, long reserveBytes, string reserveSetting, Func<string, long>? probe = null) =>
        new DiskLedger().Open(filesystem, reserveBytes, reserveSetting, probe);

    /// <summary>Records <paramref name="bytes"/> about to be written, or returns false (and records nothing) when they do not fit.</summary>
    public bool TryTake(long bytes)
    {
        lock (_ledger.Sync)
        {
            if (bytes < 0 || _taken + _held + bytes > LimitLocked())
            {
                return false;
            }

            _taken += bytes;
            _account.Taken += bytes;
            return true;
        }
    }

    /// <summary>Holds <paramref name="bytes"/> that downloads of this operation will write, until the budget closes; false when they do not fit.</summary>
    public bool TryHold(long bytes)
    {
        lock (_ledger.Sync)
        {
            if (bytes < 0 || _taken + _held + bytes > LimitLocked())
            {
                return false;
            }

            _held += bytes;
            _account.Held += bytes;
            return true;
        }
    }

    /// <summary>"the N bytes free on /x after [s] disk_reserve_bytes = R", for errors (N is <see cref="Limit"/>).</summary>
    public string Describe()
    {
        long limit, others;
        lock (_ledger.Sync)
        {
            limit = Math.Max(0, LimitLocked());
            others = OthersLocked();
        }

        return $"the {limit} bytes free on {Filesystem} after {ReserveSetting} = {ReserveBytes}"
            + (others > 0 ? $" and the {others} bytes that pulls and restores running beside it take there" : "");
    }

    public void Dispose()
    {
        long held;
        lock (_ledger.Sync)
        {
            if (_closed)
            {
                return;
            }

            _closed = true;
            held = _held;
        }

        _ledger.Close(_account, held);
    }

    private long LimitLocked() => FreeBytes - ReserveBytes - OthersLocked();

    /// <summary>What the others took since this budget opened, and what they hold now (less the holds of its own operation).</summary>
    private long OthersLocked() =>
        (_account.Taken - _takenByAllAtOpen - _taken) + (_account.Held - _held - (_sameOperation?._held ?? 0));
}

/// <summary>
/// Counts the bytes a consumer read through it: the compressed side of a decompressor, so an extraction can compare
/// what it wrote with what it was given (the expansion ratio of a decompression bomb).
/// </summary>
public class CountingReadStream(Stream inner, bool leaveOpen = false) : Stream
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
        GC.SuppressFinalize(this);
    }

    /// <summary>Sees each chunk before it is counted, with the bytes read before it; a subclass refuses a chunk by throwing.</summary>
    protected virtual void OnRead(long bytesBefore, int n)
    {
    }

    private int Count(int n)
    {
        OnRead(BytesRead, n);
        BytesRead += n;
        return n;
    }
}

/// <summary>
/// The decompressed side of an archive stored as it is (an imported root filesystem): every chunk read is checked
/// against a byte cap, an expansion ratio over the compressed bytes consumed and a disk budget before the caller
/// writes it, so a decompression bomb stops while it expands. <paramref name="what"/> names the archive in errors.
/// </summary>
public sealed class ExpansionGuardStream(Stream inner, Func<long> compressedBytesRead, string what, ExpansionGuard guard) : CountingReadStream(inner)
{
    protected override void OnRead(long bytesBefore, int n)
    {
        var total = bytesBefore + n;
        if (total > guard.MaxBytes)
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"{what} was refused: it expands to more than {guard.MaxBytes} bytes, the configured limit ({guard.MaxBytesSetting}); nothing was kept");
        }

        if (guard.MaxExpansionRatio > 0 && total > guard.RatioCheckFloorBytes)
        {
            var compressed = Math.Max(1, compressedBytesRead());
            if (total > compressed * guard.MaxExpansionRatio)
            {
                throw new CrestException(ErrorKind.InvalidArgument,
                    $"{what} was refused: it expands to more than {total} bytes from {compressed} compressed bytes, more than {guard.RatioSetting} = {guard.MaxExpansionRatio} allows; "
                    + "raise it for an archive you trust; nothing was kept");
            }
        }

        if (guard.Disk is { } disk && !disk.TryTake(n))
        {
            throw new CrestException(ErrorKind.ResourceExhausted,
                $"{what} was refused: it expands to at least {total} bytes, more than {disk.Describe()}; free space on the node or lower the reserve; nothing was kept");
        }
    }
}

/// <summary>The limits an <see cref="ExpansionGuardStream"/> enforces, with the settings its errors name.</summary>
public sealed record ExpansionGuard(long MaxBytes, string MaxBytesSetting, double MaxExpansionRatio, long RatioCheckFloorBytes, string RatioSetting, DiskBudget? Disk);
