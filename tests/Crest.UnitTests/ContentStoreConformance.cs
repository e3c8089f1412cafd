using Crest.Core;
using Crest.Images;
using Crest.TestKit;

namespace Crest.UnitTests;

/// <summary>The checks every <see cref="IContentStore"/> passes; one subclass per implementation.</summary>
public abstract class ContentStoreConformance : IDisposable
{
    private readonly TempDir _dir = new();

    protected abstract IContentStore Create(string root);

    private IContentStore Store => _store ??= Create(_dir.Path);

    private IContentStore? _store;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Verified_content_is_stored_and_read_back()
    {
        var bytes = "layer bytes"u8.ToArray();
        var digest = Digest.Of(bytes);

        await Store.IngestAsync(new MemoryStream(bytes), digest, bytes.Length, null, Ct);

        Assert.True(Store.Exists(digest));
        Assert.Equal(bytes.Length, Store.SizeOf(digest));
        using var read = new MemoryStream();
        await using (var s = Store.OpenRead(digest))
        {
            await s.CopyToAsync(read, Ct);
        }

        Assert.Equal(bytes, read.ToArray());
        Assert.Contains(digest, Store.List());
    }

    [Fact]
    public async Task Content_with_the_wrong_digest_is_refused_and_not_stored()
    {
        var claimed = Digest.Of("what the manifest says"u8);

        var e = await Assert.ThrowsAsync<CrestException>(() => Store.IngestAsync(new MemoryStream("something else"u8.ToArray()), claimed, 14, null, Ct));

        Assert.Contains($"blob {claimed}", e.Message, StringComparison.Ordinal);
        Assert.False(Store.Exists(claimed));
        Assert.Empty(Store.List());
    }

    [Fact]
    public async Task Content_longer_or_shorter_than_declared_is_refused()
    {
        var bytes = "twelve bytes"u8.ToArray();
        var digest = Digest.Of(bytes);

        await Assert.ThrowsAsync<CrestException>(() => Store.IngestAsync(new MemoryStream(bytes), digest, 5, null, Ct));
        await Assert.ThrowsAsync<CrestException>(() => Store.IngestAsync(new MemoryStream(bytes), digest, 50, null, Ct));

        Assert.False(Store.Exists(digest));
    }

    [Fact]
    public async Task Progress_reports_the_bytes_received()
    {
        var bytes = new byte[300_000];
        Random.Shared.NextBytes(bytes);
        var seen = new List<long>();

        await Store.IngestAsync(new MemoryStream(bytes), Digest.Of(bytes), bytes.Length, seen.Add, Ct);

        Assert.Equal(bytes.Length, seen[^1]);
        Assert.Equal(seen.Order(), seen);
    }

    [Fact]
    public async Task Written_and_streamed_content_gets_its_own_digest()
    {
        var written = await Store.WriteAsync("{}"u8.ToArray(), Ct);
        var (streamed, size) = await Store.WriteStreamAsync(new MemoryStream("abc"u8.ToArray()), Ct);

        Assert.Equal(Digest.Of("{}"u8), written);
        Assert.Equal(Digest.Of("abc"u8), streamed);
        Assert.Equal(3, size);
    }

    [Fact]
    public async Task Deleted_content_is_gone_and_reading_it_is_not_found()
    {
        var digest = await Store.WriteAsync("x"u8.ToArray(), Ct);

        Store.Delete(digest);

        Assert.False(Store.Exists(digest));
        var e = Assert.Throws<CrestException>(() => Store.OpenRead(digest));
        Assert.Equal(ErrorKind.NotFound, e.Kind);
    }

    public void Dispose()
    {
        _dir.Dispose();
        GC.SuppressFinalize(this);
    }
}

public sealed class ContentStoreOnDiskTests : ContentStoreConformance
{
    protected override IContentStore Create(string root) => new ContentStore(root);

    [Fact]
    public async Task A_failed_ingest_leaves_no_file_in_the_ingest_directory()
    {
        using var dir = new TempDir();
        var store = new ContentStore(dir.Path);

        await Assert.ThrowsAsync<CrestException>(() => store.IngestAsync(new MemoryStream("abc"u8.ToArray()), Digest.Of("xyz"u8), 3, null, TestContext.Current.CancellationToken));

        Assert.Empty(Directory.EnumerateFiles(Path.Combine(dir.Path, "ingest")));
        Assert.Empty(Directory.EnumerateFiles(Path.Combine(dir.Path, "blobs", "sha256")));
    }
}

public sealed class ContentStoreInMemoryTests : ContentStoreConformance
{
    protected override IContentStore Create(string root) => new MemoryContentStore();
}
