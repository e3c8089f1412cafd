using System.Text;
using Crest.Core;
using Crest.Store;
using Crest.TestKit;

namespace Crest.UnitTests;

/// <summary>The checks every <see cref="IImageMetadataStore"/> passes; one subclass per implementation.</summary>
public abstract class ImageMetadataStoreConformance : IDisposable
{
    private static readonly DateTimeOffset Created = new(2026, 12, 1, 8, 0, 0, TimeSpan.Zero);

    private readonly TempDir _dir = new();

    protected abstract Task<IImageMetadataStore> CreateAsync(string root);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private Task<IImageMetadataStore> StoreAsync() => CreateAsync(_dir.Path);

    private static Digest D(string seed) => Digest.Of(Encoding.UTF8.GetBytes(seed));

    private static ImageRecord Image(string seed, string[]? tags = null, string[]? digests = null, Digest[]? blobs = null) => new(
        D("config " + seed), D("manifest " + seed), D("manifest " + seed), "application/vnd.oci.image.manifest.v1+json",
        "sha256:chain-top-" + seed, 1234, Created, tags ?? [], digests ?? [],
        blobs ?? [D("manifest " + seed), D("config " + seed), D("layer " + seed)], ["sha256:chain-base-" + seed, "sha256:chain-top-" + seed]);

    private static List<string> Sorted(IEnumerable<Digest> digests) => [.. digests.Select(d => d.ToString()).Order(StringComparer.Ordinal)];

    private static SnapshotRecord Snapshot(string key, string? parent = null, string? directory = null) =>
        new(key, directory ?? "dir-" + key[^4..], parent, 42, Created);

    [Fact]
    public async Task An_image_is_read_back_with_its_references_blobs_and_layers()
    {
        var store = await StoreAsync();
        var image = Image("one", tags: ["docker.io/library/one:latest"], digests: ["docker.io/library/one@" + D("manifest one")]);

        await store.PutImageAsync(image, Ct);

        var read = await store.GetImageAsync(image.Id, Ct);
        Assert.NotNull(read);
        Assert.Equal((image.ManifestDigest, image.TargetDigest, image.TargetMediaType, image.ChainId, image.Size, image.CreatedAt),
            (read.ManifestDigest, read.TargetDigest, read.TargetMediaType, read.ChainId, read.Size, read.CreatedAt));
        Assert.Equal(image.RepoTags, read.RepoTags);
        Assert.Equal(image.RepoDigests, read.RepoDigests);
        Assert.Equal(Sorted(image.Blobs), Sorted(read.Blobs));
        Assert.Equal(image.LayerChainIds, read.LayerChainIds);
        Assert.Null(await store.GetImageAsync(D("config absent"), Ct));
    }

    [Fact]
    public async Task Tags_and_digest_references_resolve_to_their_image()
    {
        var store = await StoreAsync();
        var digestRef = "docker.io/library/one@" + D("manifest one");
        await store.PutImageAsync(Image("one", tags: ["docker.io/library/one:latest"], digests: [digestRef]), Ct);

        Assert.Equal(D("config one"), await store.ResolveReferenceAsync("docker.io/library/one:latest", Ct));
        Assert.Equal(D("config one"), await store.ResolveReferenceAsync(digestRef, Ct));
        Assert.Null(await store.ResolveReferenceAsync("docker.io/library/one:other", Ct));
    }

    [Fact]
    public async Task A_tag_moves_to_the_image_put_with_it_last()
    {
        var store = await StoreAsync();
        await store.PutImageAsync(Image("old", tags: ["docker.io/library/app:latest", "docker.io/library/app:1.0"]), Ct);

        await store.PutImageAsync(Image("new", tags: ["docker.io/library/app:latest"]), Ct);

        Assert.Equal(D("config new"), await store.ResolveReferenceAsync("docker.io/library/app:latest", Ct));
        var old = await store.GetImageAsync(D("config old"), Ct);
        Assert.NotNull(old);
        Assert.Equal(["docker.io/library/app:1.0"], old.RepoTags);
    }

    [Fact]
    public async Task Putting_an_image_again_keeps_the_blobs_and_tags_it_had()
    {
        var store = await StoreAsync();
        await store.PutImageAsync(Image("one", tags: ["docker.io/library/one:a"]), Ct);

        await store.PutImageAsync(Image("one", tags: ["docker.io/library/one:b"], blobs: [D("index one")]), Ct);

        var read = await store.GetImageAsync(D("config one"), Ct);
        Assert.NotNull(read);
        Assert.Equal(["docker.io/library/one:a", "docker.io/library/one:b"], read.RepoTags);
        Assert.Equal(Sorted([D("manifest one"), D("config one"), D("layer one"), D("index one")]), Sorted(read.Blobs));
        Assert.Single(await store.ListImagesAsync(Ct));
    }

    [Fact]
    public async Task A_deleted_image_takes_its_references_with_it_and_a_second_delete_finds_nothing()
    {
        var store = await StoreAsync();
        await store.PutImageAsync(Image("one", tags: ["docker.io/library/one:latest"]), Ct);
        await store.PutImageAsync(Image("two", tags: ["docker.io/library/two:latest"]), Ct);

        Assert.True(await store.DeleteImageAsync(D("config one"), Ct));
        Assert.False(await store.DeleteImageAsync(D("config one"), Ct));

        Assert.Null(await store.GetImageAsync(D("config one"), Ct));
        Assert.Null(await store.ResolveReferenceAsync("docker.io/library/one:latest", Ct));
        Assert.Equal([D("config two")], (await store.ListImagesAsync(Ct)).Select(i => i.Id));
    }

    [Fact]
    public async Task A_snapshot_is_recorded_once_and_the_first_record_wins()
    {
        var store = await StoreAsync();

        Assert.True(await store.AddSnapshotAsync(Snapshot("sha256:base", directory: "first"), Ct));
        Assert.False(await store.AddSnapshotAsync(Snapshot("sha256:base", directory: "second"), Ct));

        Assert.Equal(Snapshot("sha256:base", directory: "first"), await store.GetSnapshotAsync("sha256:base", Ct));
        Assert.Null(await store.GetSnapshotAsync("sha256:absent", Ct));
    }

    [Fact]
    public async Task Snapshots_are_listed_with_their_parents_until_deleted()
    {
        var store = await StoreAsync();
        await store.AddSnapshotAsync(Snapshot("sha256:base"), Ct);
        await store.AddSnapshotAsync(Snapshot("sha256:top1", parent: "sha256:base"), Ct);

        await store.DeleteSnapshotAsync("sha256:top1", Ct);
        await store.DeleteSnapshotAsync("sha256:absent", Ct);

        Assert.Equal([Snapshot("sha256:base")], await store.ListSnapshotsAsync(Ct));
    }

    [Fact]
    public async Task Leases_are_held_per_holder_and_a_key_stays_leased_while_any_holder_keeps_it()
    {
        var store = await StoreAsync();
        await store.AddSnapshotLeaseAsync("container-a", "sha256:shared", Ct);
        await store.AddSnapshotLeaseAsync("container-a", "sha256:shared", Ct);
        await store.AddSnapshotLeaseAsync("container-b", "sha256:shared", Ct);
        await store.AddSnapshotLeaseAsync("container-b", "sha256:own", Ct);

        Assert.Equal(["sha256:own", "sha256:shared"], (await store.LeasedSnapshotsAsync(Ct)).Order(StringComparer.Ordinal));

        await store.RemoveSnapshotLeasesAsync("container-b", Ct);
        Assert.Equal(["sha256:shared"], await store.LeasedSnapshotsAsync(Ct));

        await store.RemoveSnapshotLeasesAsync("container-a", Ct);
        await store.RemoveSnapshotLeasesAsync("container-never", Ct);
        Assert.Empty(await store.LeasedSnapshotsAsync(Ct));
    }

    public void Dispose()
    {
        _dir.Dispose();
        GC.SuppressFinalize(this);
    }
}

public sealed class SqliteImageMetadataStoreTests : ImageMetadataStoreConformance
{
    protected override async Task<IImageMetadataStore> CreateAsync(string root) =>
        new SqliteImageMetadataStore(await MetadataStore.OpenAsync(Path.Combine(root, "crest.db"), TimeProvider.System, TestContext.Current.CancellationToken));
}

public sealed class MemoryImageMetadataStoreTests : ImageMetadataStoreConformance
{
    protected override Task<IImageMetadataStore> CreateAsync(string root) => Task.FromResult<IImageMetadataStore>(new MemoryImageMetadataStore());
}
