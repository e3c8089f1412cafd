using Crest.Core;
using Crest.Images;
using Crest.Store;
using Crest.TestKit;

namespace Crest.UnitTests;

/// <summary>The checks the overlay snapshotter passes over every metadata store implementation.</summary>
public abstract class SnapshotterConformance : IDisposable
{
    private readonly TempDir _dir = new();

    protected abstract Task<IImageMetadataStore> CreateMetadataAsync(string root);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private async Task<OverlaySnapshotter> SnapshotterAsync() =>
        new(_dir.Combine("snapshots"), await CreateMetadataAsync(_dir.Path), TimeProvider.System);

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

    public void Dispose()
    {
        _dir.Dispose();
        GC.SuppressFinalize(this);
    }
}

public sealed class SnapshotterOverSqliteTests : SnapshotterConformance
{
    protected override async Task<IImageMetadataStore> CreateMetadataAsync(string root) =>
        new SqliteImageMetadataStore(await MetadataStore.OpenAsync(Path.Combine(root, "crest.db"), TimeProvider.System, TestContext.Current.CancellationToken));
}

public sealed class SnapshotterOverMemoryTests : SnapshotterConformance
{
    protected override Task<IImageMetadataStore> CreateMetadataAsync(string root) => Task.FromResult<IImageMetadataStore>(new MemoryImageMetadataStore());
}
