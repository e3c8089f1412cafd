using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Linux;
using Crest.TestKit;

namespace Crest.UnitTests;

/// <summary>
/// Pulls, loads and restores that run side by side share one free space: what one takes or holds, the others see. Free
/// space is faked (100 MiB, 10 MiB reserved), so nothing here fills a disk.
/// </summary>
public sealed class DiskLedgerTests : IDisposable
{
    private const long MiB = 1 << 20;
    private const string Setting = "[restore] disk_reserve_bytes";

    private static readonly Func<string, long> HundredMiB = _ => 100 * MiB;

    private readonly TempDir _dir = new("crest-ledger");
    private readonly DiskLedger _ledger = new();

    public void Dispose() => _dir.Dispose();

    private DiskBudget Open(string? path = null, DiskBudget? sameOperation = null) =>
        _ledger.Open(path ?? _dir.Path, 10 * MiB, Setting, HundredMiB, sameOperation);

    [Fact]
    public void Two_writers_on_one_filesystem_share_its_free_space_and_together_never_pass_it()
    {
        using var first = Open();
        using var second = Open(_dir.CreateDirectory("elsewhere-on-the-same-disk"));

        Assert.True(first.TryTake(60 * MiB));

        Assert.Equal(30 * MiB, second.Limit);
        Assert.False(second.TryTake(40 * MiB));
        Assert.Contains($"the {30 * MiB} bytes free on", second.Describe(), StringComparison.Ordinal);
        Assert.Contains($"and the {60 * MiB} bytes that pulls and restores running beside it take there", second.Describe(), StringComparison.Ordinal);
        Assert.True(second.TryTake(30 * MiB));
        Assert.Equal(0, first.Available);
        Assert.Equal(1, _ledger.OpenAccounts);
    }

    [Fact]
    public void Takes_from_many_threads_stop_exactly_at_the_free_space()
    {
        var budgets = Enumerable.Range(0, 8).Select(_ => Open()).ToList();
        try
        {
            var granted = 0;
            Parallel.For(0, 400, i =>
            {
                if (budgets[i % budgets.Count].TryTake(MiB))
                {
                    Interlocked.Increment(ref granted);
                }
            });

            Assert.Equal(90, granted);
        }
        finally
        {
            budgets.ForEach(b => b.Dispose());
        }

        Assert.Equal(0, _ledger.OpenAccounts);
    }

    [Fact]
    public void A_download_holds_its_bytes_against_others_until_it_ends_but_not_against_its_own_unpack()
    {
        var pull = Open();
        Assert.True(pull.TryHold(50 * MiB));
        using var unpack = Open(sameOperation: pull);
        using var restore = Open();

        Assert.Equal(90 * MiB, unpack.Limit);
        Assert.Equal(40 * MiB, restore.Limit);
        Assert.False(restore.TryHold(41 * MiB));

        pull.Dispose();
        pull.Dispose();
        Assert.Equal(90 * MiB, restore.Limit);
    }

    [Fact]
    public void Filesystems_have_accounts_of_their_own_and_an_account_ends_with_its_last_budget()
    {
        var onDisk = Open();
        var onProc = Open("/proc");
        Assert.True(onDisk.TryTake(80 * MiB));

        Assert.Equal(90 * MiB, onProc.Limit);
        Assert.Equal(2, _ledger.OpenAccounts);

        onDisk.Dispose();
        onProc.Dispose();
        Assert.Equal(0, _ledger.OpenAccounts);
    }

    [Fact]
    public async Task A_restore_beside_a_pull_still_downloading_is_refused_before_the_entry_that_no_longer_fits()
    {
        var archive = _dir.Combine("checkpoint.tar");
        using (var t = new System.Formats.Tar.TarWriter(File.Create(archive)))
        {
            TestImages.File(t, "checkpoint/pages-1.img", new byte[(int)(16 * MiB)]);
        }

        var limits = new RestoreLimits { MaxExpansionRatio = 0, TargetFilesystem = _dir.Path, DiskReserveBytes = 10 * MiB, FreeBytesOf = _ => 30 * MiB, Disks = _ledger };
        var staging = _dir.CreateDirectory("staging");
        var pull = _ledger.Open(_dir.Path, 10 * MiB, "[images] disk_reserve_bytes", _ => 30 * MiB);
        try
        {
            Assert.True(pull.TryHold(8 * MiB));
            await using var file = File.OpenRead(archive);

            var full = await Assert.ThrowsAsync<CrestException>(() =>
                new CheckpointReader(limits).UnpackAsync(file, staging, $"checkpoint archive {archive}", TestContext.Current.CancellationToken));

            Assert.Equal(ErrorKind.ResourceExhausted, full.Kind);
            Assert.Contains($"the {12 * MiB} bytes free on {staging} after [restore] disk_reserve_bytes = {10 * MiB} and the {8 * MiB} bytes that pulls and restores running beside it take there",
                full.Message, StringComparison.Ordinal);
            Assert.False(File.Exists(Path.Combine(staging, "checkpoint", "pages-1.img")));
        }
        finally
        {
            pull.Dispose();
        }

        // With the pull done, the same archive fits in the 20 MiB left after the reserve.
        await using (var again = File.OpenRead(archive))
        {
            await new CheckpointReader(limits).UnpackAsync(again, staging, $"checkpoint archive {archive}", TestContext.Current.CancellationToken);
        }

        Assert.Equal(16 * MiB, new FileInfo(Path.Combine(staging, "checkpoint", "pages-1.img")).Length);
        Assert.Equal(0, _ledger.OpenAccounts);
    }
}
