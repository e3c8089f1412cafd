using System.Formats.Tar;
using System.Text;
using System.Text.Json;
using Crest.Checkpoint;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Linux;
using Crest.TestKit;

namespace Crest.UnitTests;

/// <summary>
/// The rootfs rounds of a live migration on a plain directory standing in for the overlay upper directory: what a
/// round sends after the one before (changed in place within the same second, created, deleted, renamed, changed while
/// the round read it), what the frozen delta lists, and that rounds plus delta restore the same tree.
/// </summary>
public sealed class RootfsRoundsTests : IDisposable
{
    private readonly TempDir _dir = new();

    private readonly string _upper;

    public RootfsRoundsTests()
    {
        _upper = _dir.CreateDirectory("upper");
    }

    public void Dispose() => _dir.Dispose();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private string At(string relative) => Path.Combine(_upper, relative);

    /// <summary>A round's tar: entry names with their content (regular files) or type.</summary>
    private sealed record Written(RootfsRound Round, Dictionary<string, string> Entries, byte[] Tar);

    /// <summary>
    /// One round. Without a margin by default: the rule itself, as if the round began long after the files were written
    /// (the test writes them within microseconds); <see cref="Files_changed_just_before_a_round_began_are_sent_again_next_round"/> covers the margin.
    /// </summary>
    private async Task<Written> RoundAsync(RootfsBaseline? since, bool final = false, Stream? output = null, IReadOnlyCollection<string>? excluded = null, long margin = 0)
    {
        if (margin == 0)
        {
            await PastLastChangeAsync();
        }

        var buffer = new MemoryStream();
        var round = await RootfsRounds.WriteAsync(_upper, output ?? buffer, excluded ?? [], since, final, Ct, margin);
        if (output is WatchingStream w)
        {
            buffer = w.Inner;
        }

        var tar = buffer.ToArray();
        var entries = new Dictionary<string, string>(StringComparer.Ordinal);
        using var reader = new TarReader(new MemoryStream(tar));
        while (await reader.GetNextEntryAsync(copyData: true, Ct) is { } entry)
        {
            entries[entry.Name.TrimEnd('/')] = entry.DataStream is { } data ? await new StreamReader(data).ReadToEndAsync(Ct) : entry.EntryType.ToString();
        }

        return new Written(round, entries, tar);
    }

    /// <summary>
    /// Waits (a few milliseconds, one tick of the kernel's coarse clock) until the file clock has passed every change in
    /// the upper directory: a change within the tick a round begins in cannot be told from one just after, and is sent
    /// again, which these tests of what is not sent must exclude.
    /// </summary>
    private async Task PastLastChangeAsync()
    {
        var last = Directory.EnumerateFileSystemEntries(_upper, "*", SearchOption.AllDirectories).Append(_upper)
            .Select(p => FileKinds.TryStamp(p, out var s) ? Math.Max(s.ChangedUnixNanos, s.ModifiedUnixNanos) : 0).Max();
        await Eventually.UntilAsync(() => FileKinds.CoarseRealtimeNanos() > last, "the file clock to pass the last change", TimeSpan.FromSeconds(5), Ct);
    }

    [Fact]
    public async Task The_first_round_sends_everything_and_an_unchanged_tree_sends_nothing_next()
    {
        Directory.CreateDirectory(At("data/sub"));
        await File.WriteAllTextAsync(At("data/sub/big"), new string('x', 10_000), Ct);
        await File.WriteAllTextAsync(At("small"), "a", Ct);

        var first = await RoundAsync(null);
        var second = await RoundAsync(first.Round.Next);

        Assert.Equal(["data", "data/sub", "data/sub/big", "small"], first.Entries.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(2, first.Round.Files);
        Assert.Equal(10_001, first.Round.Bytes);
        Assert.Empty(second.Entries);
        Assert.Equal(0, second.Round.Bytes);
        // Still a tar a restore can read (TarWriter alone writes no bytes without an entry).
        Assert.Equal(1024, second.Tar.Length);
    }

    [Fact]
    public async Task Files_changed_just_before_a_round_began_are_sent_again_next_round()
    {
        await File.WriteAllTextAsync(At("written-just-before"), "x", Ct);

        var first = await RoundAsync(null, margin: RootfsRounds.ClockMarginNanos);
        var second = await RoundAsync(first.Round.Next, margin: RootfsRounds.ClockMarginNanos);

        // Its write may have been in flight as round 1 began (stamped before its data landed).
        Assert.True(FileKinds.TryStamp(At("written-just-before"), out var stamp));
        Assert.True(stamp.ChangedUnixNanos > first.Round.Next.StartedUnixNanos - RootfsRounds.ClockMarginNanos, "the test wrote the file long before the round");
        Assert.Equal("x", second.Entries["written-just-before"]);
    }

    [Fact]
    public async Task A_file_rewritten_in_place_within_the_same_second_with_its_old_times_is_sent_again()
    {
        await File.WriteAllTextAsync(At("state"), "v1", Ct);
        await File.WriteAllTextAsync(At("untouched"), "same", Ct);
        var modified = File.GetLastWriteTimeUtc(At("state"));
        var first = await RoundAsync(null);

        // Same size, at once, and the modification time put back: only the change time tells.
        await using (var f = new FileStream(At("state"), FileMode.Open, FileAccess.Write))
        {
            await f.WriteAsync("v2"u8.ToArray(), Ct);
        }

        File.SetLastWriteTimeUtc(At("state"), modified);
        var second = await RoundAsync(first.Round.Next);

        Assert.Equal(["state"], second.Entries.Keys);
        Assert.Equal("v2", second.Entries["state"]);
    }

    [Fact]
    public async Task Created_deleted_and_renamed_files_and_a_renamed_directory_are_sent_as_entries_and_deletions()
    {
        await File.WriteAllTextAsync(At("gone"), "bye", Ct);
        await File.WriteAllTextAsync(At("old-name"), "moved", Ct);
        Directory.CreateDirectory(At("dir/inner"));
        await File.WriteAllTextAsync(At("dir/inner/file"), "deep", Ct);
        var first = await RoundAsync(null);

        await File.WriteAllTextAsync(At("new"), "hello", Ct);
        File.Delete(At("gone"));
        File.Move(At("old-name"), At("new-name"));
        Directory.Move(At("dir"), At("moved-dir"));
        var second = await RoundAsync(first.Round.Next);

        Assert.Equal("hello", second.Entries["new"]);
        Assert.Equal("moved", second.Entries["new-name"]);
        // A renamed directory's children keep their times, but their paths are new: sent.
        Assert.Equal("deep", second.Entries["moved-dir/inner/file"]);
        Assert.Contains(".wh.gone", second.Entries.Keys);
        Assert.Contains(".wh.old-name", second.Entries.Keys);
        // Only the top of a vanished tree is deleted.
        Assert.Contains(".wh.dir", second.Entries.Keys);
        Assert.DoesNotContain(second.Entries.Keys, k => k.StartsWith("dir/", StringComparison.Ordinal));
        Assert.Equal(["/dir", "/.wh.dir", "/gone", "/.wh.gone", "/old-name", "/.wh.old-name"], second.Round.Deleted);
    }

    /// <summary>An output that runs an action once, the first time it is handed bytes that contain a marker.</summary>
    private sealed class WatchingStream(byte[] marker, Action onMarker) : Stream
    {
        private bool _seen;

        public MemoryStream Inner { get; } = new();

        public override bool CanRead => false;

        public override bool CanSeek => Inner.CanSeek;

        public override bool CanWrite => true;

        public override long Length => Inner.Length;

        public override long Position { get => Inner.Position; set => Inner.Position = value; }

        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            Inner.Write(buffer);
            if (!_seen && buffer.IndexOf(marker) >= 0)
            {
                _seen = true;
                onMarker();
            }
        }

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        {
            Write(buffer.AsSpan(offset, count));
            return Task.CompletedTask;
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Write(buffer.Span);
            return ValueTask.CompletedTask;
        }

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override long Seek(long offset, SeekOrigin origin) => Inner.Seek(offset, origin);

        public override void SetLength(long value) => Inner.SetLength(value);
    }

    [Fact]
    public async Task A_file_changed_while_a_round_reads_it_is_sent_again_by_the_next_round()
    {
        await File.WriteAllTextAsync(At("a-log"), "first-contents", Ct);
        await File.WriteAllTextAsync(At("b-other"), "other", Ct);
        var first = await RoundAsync(null);

        await File.WriteAllTextAsync(At("a-log"), "second-content", Ct);
        // The round has read "second-content" and is writing it: the workload writes again, same length, same tick.
        var watching = new WatchingStream(Encoding.UTF8.GetBytes("second-content"), () => File.WriteAllText(At("a-log"), "third--content"));
        var second = await RoundAsync(first.Round.Next, output: watching);
        var third = await RoundAsync(second.Round.Next);

        Assert.Equal("second-content", second.Entries["a-log"]);
        Assert.Equal("third--content", third.Entries["a-log"]);
        Assert.DoesNotContain("b-other", third.Entries.Keys);
    }

    [Fact]
    public async Task A_file_that_grows_while_it_is_read_is_sent_with_the_length_it_had_when_opened()
    {
        await File.WriteAllTextAsync(At("growing"), new string('a', 100_000), Ct);
        var watching = new WatchingStream("aaaa"u8.ToArray(), () => File.AppendAllText(At("growing"), "MORE"));

        var first = await RoundAsync(null, output: watching);
        var second = await RoundAsync(first.Round.Next);

        Assert.Equal(100_000, first.Round.Bytes);
        Assert.Equal(100_004, second.Entries["growing"].Length);
    }

    [Fact]
    public async Task Excluded_mount_destinations_are_never_sent()
    {
        Directory.CreateDirectory(At("etc"));
        await File.WriteAllTextAsync(At("etc/hosts"), "runtime", Ct);
        await File.WriteAllTextAsync(At("etc/mine"), "mine", Ct);

        var first = await RoundAsync(null, excluded: ["/etc/hosts"]);

        Assert.Equal(["etc", "etc/mine"], first.Entries.Keys.Order(StringComparer.Ordinal));
    }

    private Task MknodWhiteoutAsync(string relative) => CheckpointTests.MknodWhiteoutAsync(At(relative));

    [Fact]
    public async Task The_frozen_delta_lists_every_whiteout_and_rounds_plus_delta_restore_the_same_tree()
    {
        Requires.Root();
        Directory.CreateDirectory(At("etc"));
        await MknodWhiteoutAsync("etc/motd");
        await File.WriteAllTextAsync(At("big"), new string('b', 50_000), Ct);
        await File.WriteAllTextAsync(At("log"), "1\n", Ct);
        await File.WriteAllTextAsync(At("tmp-file"), "temporary", Ct);
        var first = await RoundAsync(null);
        await File.AppendAllTextAsync(At("log"), "2\n", Ct);
        var second = await RoundAsync(first.Round.Next);

        // Then, "frozen": one more line, a deletion of a file staged earlier, a new whiteout.
        await File.AppendAllTextAsync(At("log"), "3\n", Ct);
        File.Delete(At("tmp-file"));
        await MknodWhiteoutAsync("etc/issue");
        var delta = await RoundAsync(second.Round.Next, final: true);

        Assert.Equal([".wh.tmp-file", "etc", "etc/.wh.issue", "log"], delta.Entries.Keys.Order(StringComparer.Ordinal));
        Assert.Equal("1\n2\n3\n", delta.Entries["log"]);
        Assert.DoesNotContain("big", delta.Entries.Keys);
        // deleted.files as of the freeze: the whiteout sent in round 1 as well.
        Assert.Contains("/etc/motd", delta.Round.Deleted);
        Assert.Contains("/etc/issue", delta.Round.Deleted);
        Assert.Contains("/tmp-file", delta.Round.Deleted);

        // Applied as a migration target does: the rounds in order, then the delta and deleted.files.
        var restoreDir = _dir.CreateDirectory("restore");
        var staged = Directory.CreateDirectory(Path.Combine(restoreDir, CheckpointFiles.StagedRootfsRounds)).FullName;
        await File.WriteAllBytesAsync(Path.Combine(staged, "0001.tar"), first.Tar, Ct);
        await File.WriteAllBytesAsync(Path.Combine(staged, "0002.tar"), second.Tar, Ct);
        await File.WriteAllBytesAsync(Path.Combine(restoreDir, CheckpointFiles.RootfsDiff), delta.Tar, Ct);
        await File.WriteAllTextAsync(Path.Combine(restoreDir, CheckpointFiles.DeletedFiles), JsonSerializer.Serialize(delta.Round.Deleted.ToList(), CheckpointJson.Default.ListString), Ct);
        var rootfs = _dir.CreateDirectory("rootfs");
        Directory.CreateDirectory(Path.Combine(rootfs, "etc"));
        await File.WriteAllTextAsync(Path.Combine(rootfs, "etc", "motd"), "image motd", Ct);
        await File.WriteAllTextAsync(Path.Combine(rootfs, "etc", "issue"), "image issue", Ct);

        await PodRestoreHoldTests.NewRestoreSteps().ApplyRootfsAsync(restoreDir, rootfs, CheckpointTests.RestoredContainer(), Ct);

        Assert.Equal(new string('b', 50_000), await File.ReadAllTextAsync(Path.Combine(rootfs, "big"), Ct));
        Assert.Equal("1\n2\n3\n", await File.ReadAllTextAsync(Path.Combine(rootfs, "log"), Ct));
        Assert.False(File.Exists(Path.Combine(rootfs, "tmp-file")));
        Assert.False(File.Exists(Path.Combine(rootfs, "etc", "motd")));
        Assert.False(File.Exists(Path.Combine(rootfs, "etc", "issue")));
        Assert.Empty(Directory.EnumerateFileSystemEntries(rootfs, ".wh.*", SearchOption.AllDirectories));
    }

    private static async Task<StagedRootfsRound> StageAsync(RootfsStaging staging, string? token, byte[] round)
    {
        async IAsyncEnumerable<ReadOnlyMemory<byte>> Chunks()
        {
            await Task.Yield();
            yield return round;
        }

        return await staging.ReceiveAsync(token, Chunks(), Ct);
    }

    [Fact]
    public async Task Staged_rounds_are_claimed_only_by_a_checkpoint_that_names_them_all_in_order()
    {
        var paths = new CrestPaths(_dir.Combine("root"), _dir.Combine("state"), _dir.Combine("state", "s.sock"));
        var staging = new RootfsStaging(paths, new RestoreOptions { ViaCreate = true });
        var one = await StageAsync(staging, null, [1, 2, 3]);
        var two = await StageAsync(staging, one.StagingToken, [4, 5]);
        Assert.Equal((1, 2), (one.Round, two.Round));

        var missing = Assert.Throws<CrestException>(() => staging.Claim(one.StagingToken, [one.Sha256, two.Sha256, new string('0', 64)], _dir.Combine("restore-a"), "/x.tar"));
        var other = Assert.Throws<CrestException>(() => staging.Claim(one.StagingToken, [one.Sha256, new string('0', 64)], _dir.Combine("restore-b"), "/x.tar"));
        var unknown = Assert.Throws<CrestException>(() => staging.Claim(new string('a', 24), [one.Sha256], _dir.Combine("restore-c"), "/x.tar"));
        staging.Claim(one.StagingToken, [one.Sha256, two.Sha256], _dir.Combine("restore-d", CheckpointFiles.StagedRootfsRounds), "/x.tar");

        Assert.Contains("round 3 never arrived", missing.Message, StringComparison.Ordinal);
        Assert.Contains("round 2 is another round", other.Message, StringComparison.Ordinal);
        Assert.Equal(ErrorKind.NotFound, unknown.Kind);
        Assert.Equal([[1, 2, 3], [4, 5]], RootfsStaging.ClaimedRounds(_dir.Combine("restore-d")).Select(File.ReadAllBytes));
        Assert.Empty(Directory.EnumerateFileSystemEntries(staging.Dir));
    }

    [Fact]
    public async Task Staged_rounds_together_may_take_no_more_than_one_received_archive()
    {
        var paths = new CrestPaths(_dir.Combine("root"), _dir.Combine("state"), _dir.Combine("state", "s.sock"));
        var staging = new RootfsStaging(paths, new RestoreOptions { ViaCreate = true, Limits = new RestoreLimits { MaxArchiveBytes = 10 } });
        var one = await StageAsync(staging, null, new byte[6]);

        var e = await Assert.ThrowsAsync<CrestException>(() => StageAsync(staging, one.StagingToken, new byte[6]));

        Assert.Equal(ErrorKind.ResourceExhausted, e.Kind);
        Assert.Single(Directory.EnumerateFiles(Path.Combine(staging.Dir, one.StagingToken + ".rootfs")));
        Assert.Equal(1, staging.Sweep());
        Assert.Empty(Directory.EnumerateFileSystemEntries(staging.Dir));
    }
}
