using Crest.Core;
using Crest.Images;
using Crest.Store;
using Crest.TestKit;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>
/// The checks every <see cref="ISnapshotter"/> passes: the overlay snapshotter over each metadata store, and the
/// in-memory fake. One subclass per implementation.
/// </summary>
public abstract class SnapshotterConformance : IDisposable
{
    private readonly TempDir _dir = new();

    /// <summary>A snapshotter whose layer directories live under <paramref name="snapshotRoot"/>; <paramref name="scratch"/> is for anything else it needs.</summary>
    protected abstract Task<ISnapshotter> CreateAsync(string snapshotRoot, string scratch);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private Task<ISnapshotter> SnapshotterAsync() => CreateAsync(_dir.Combine("snapshots"), _dir.Path);

    private static Func<string, CancellationToken, Task<long>> Write(string file, string text) => async (dir, ct) =>
    {
        await File.WriteAllTextAsync(Path.Combine(dir, file), text, ct);
        return text.Length;
    };

    [Fact]
    public async Task A_committed_snapshot_is_found_with_its_content()
    {
        var s = await SnapshotterAsync();

        var committed = await s.CommitAsync("sha256:a", null, Write("f", "one"), Ct);

        Assert.Equal(committed, await s.GetAsync("sha256:a", Ct));
        var lower = Assert.Single(await s.LowerDirsAsync("sha256:a", Ct));
        Assert.Equal("one", await File.ReadAllTextAsync(Path.Combine(lower, "f"), Ct));
    }

    [Fact]
    public async Task Committing_an_existing_key_does_not_fill_again()
    {
        var s = await SnapshotterAsync();
        await s.CommitAsync("sha256:a", null, Write("f", "one"), Ct);
        var filled = false;

        await s.CommitAsync("sha256:a", null, (_, _) => { filled = true; return Task.FromResult(0L); }, Ct);

        Assert.False(filled);
    }

    [Fact]
    public async Task A_chain_lists_its_lower_dirs_top_first()
    {
        var s = await SnapshotterAsync();
        await s.CommitAsync("sha256:a", null, Write("f", "bottom"), Ct);
        await s.CommitAsync("sha256:b", "sha256:a", Write("f", "top"), Ct);

        var lower = await s.LowerDirsAsync("sha256:b", Ct);

        Assert.Equal(2, lower.Count);
        Assert.Equal("top", await File.ReadAllTextAsync(Path.Combine(lower[0], "f"), Ct));
        Assert.Equal("bottom", await File.ReadAllTextAsync(Path.Combine(lower[1], "f"), Ct));
    }

    [Fact]
    public async Task A_failed_fill_leaves_no_record_and_no_directory()
    {
        var s = await SnapshotterAsync();

        await Assert.ThrowsAsync<InvalidOperationException>(() => s.CommitAsync("sha256:a", null, (dir, _) =>
        {
            File.WriteAllText(Path.Combine(dir, "partial"), "x");
            throw new InvalidOperationException("unpack failed");
        }, Ct));

        Assert.Null(await s.GetAsync("sha256:a", Ct));
        Assert.Empty(Directory.EnumerateFileSystemEntries(s.Root));
    }

    [Fact]
    public async Task A_snapshot_with_children_cannot_be_removed_and_a_leaf_can()
    {
        var s = await SnapshotterAsync();
        await s.CommitAsync("sha256:a", null, Write("f", "a"), Ct);
        await s.CommitAsync("sha256:b", "sha256:a", Write("f", "b"), Ct);

        var e = await Assert.ThrowsAsync<CrestException>(() => s.RemoveAsync("sha256:a", Ct));
        await s.RemoveAsync("sha256:b", Ct);
        await s.RemoveAsync("sha256:a", Ct);

        Assert.Contains("sha256:b sit on it", e.Message, StringComparison.Ordinal);
        Assert.Empty(Directory.EnumerateFileSystemEntries(s.Root));
    }

    [Fact]
    public async Task A_parent_must_exist()
    {
        var s = await SnapshotterAsync();

        var e = await Assert.ThrowsAsync<CrestException>(() => s.CommitAsync("sha256:b", "sha256:missing", Write("f", "b"), Ct));

        Assert.Contains("needs its parent sha256:missing", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Orphan_directories_from_a_crash_are_cleaned()
    {
        var s = await SnapshotterAsync();
        await s.CommitAsync("sha256:a", null, Write("f", "a"), Ct);
        Directory.CreateDirectory(Path.Combine(s.Root, ".tmp-deadbeef", "fs"));
        Directory.CreateDirectory(Path.Combine(s.Root, "0123456789abcdef", "fs"));

        await s.CleanOrphansAsync(Ct);

        Assert.Single(Directory.EnumerateDirectories(s.Root));
        Assert.NotNull(await s.GetAsync("sha256:a", Ct));
    }

    [Fact]
    public async Task The_list_holds_every_committed_snapshot_and_no_removed_one()
    {
        var s = await SnapshotterAsync();
        await s.CommitAsync("sha256:a", null, Write("f", "a"), Ct);
        await s.CommitAsync("sha256:b", "sha256:a", Write("f", "b"), Ct);
        await s.CommitAsync("sha256:c", "sha256:a", Write("f", "c"), Ct);

        await s.RemoveAsync("sha256:c", Ct);

        var listed = await s.ListAsync(Ct);
        Assert.Equal(["sha256:a", "sha256:b"], listed.Select(r => r.Key).Order(StringComparer.Ordinal));
        Assert.Equal("sha256:a", listed.Single(r => r.Key == "sha256:b").Parent);
    }

    [Fact]
    public async Task Removing_a_snapshot_that_is_not_there_is_not_an_error()
    {
        var s = await SnapshotterAsync();

        await s.RemoveAsync("sha256:never", Ct);

        Assert.Empty(await s.ListAsync(Ct));
    }

    [Fact]
    public async Task The_lower_dirs_of_a_missing_snapshot_are_not_found()
    {
        var s = await SnapshotterAsync();

        var e = await Assert.ThrowsAsync<CrestException>(() => s.LowerDirsAsync("sha256:never", Ct));

        Assert.Equal(ErrorKind.NotFound, e.Kind);
        Assert.Contains("snapshot sha256:never", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Two_commits_of_one_key_at_once_leave_one_snapshot()
    {
        var s = await SnapshotterAsync();
        var bothFilling = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var filling = 0;
        Func<string, CancellationToken, Task<long>> fill = async (dir, ct) =>
        {
            // Both fills are in flight before either finishes, as with two pulls sharing a layer.
            if (Interlocked.Increment(ref filling) == 2)
            {
                bothFilling.SetResult();
            }

            await bothFilling.Task.WaitAsync(ct);
            await File.WriteAllTextAsync(Path.Combine(dir, "f"), "layer", ct);
            return 5;
        };

        var records = await Task.WhenAll(s.CommitAsync("sha256:a", null, fill, Ct), s.CommitAsync("sha256:a", null, fill, Ct));

        Assert.Equal(records[0], records[1]);
        Assert.Single(await s.ListAsync(Ct));
        Assert.Single(Directory.EnumerateDirectories(s.Root));
        Assert.Equal("layer", await File.ReadAllTextAsync(Path.Combine(Assert.Single(await s.LowerDirsAsync("sha256:a", Ct)), "f"), Ct));
    }

    public void Dispose()
    {
        _dir.Dispose();
        GC.SuppressFinalize(this);
    }
}

public sealed class SnapshotterOverSqliteTests : SnapshotterConformance
{
    protected override async Task<ISnapshotter> CreateAsync(string snapshotRoot, string scratch) =>
        new OverlaySnapshotter(snapshotRoot, new SqliteImageMetadataStore(
            await MetadataStore.OpenAsync(Path.Combine(scratch, "crest.db"), TimeProvider.System, TestContext.Current.CancellationToken)), TimeProvider.System);
}

public sealed class SnapshotterOverMemoryTests : SnapshotterConformance
{
    protected override Task<ISnapshotter> CreateAsync(string snapshotRoot, string scratch) =>
        Task.FromResult<ISnapshotter>(new OverlaySnapshotter(snapshotRoot, new MemoryImageMetadataStore(), TimeProvider.System));
}

public sealed class MemorySnapshotterTests : SnapshotterConformance
{
    protected override Task<ISnapshotter> CreateAsync(string snapshotRoot, string scratch) =>
        Task.FromResult<ISnapshotter>(new MemorySnapshotter(snapshotRoot));
}
