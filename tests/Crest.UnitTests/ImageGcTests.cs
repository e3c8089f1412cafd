using System.Text;
using Crest.Core;
using Crest.Images;
using Crest.TestKit;
using Crest.UnitTests.Fakes;
using Microsoft.Extensions.Logging.Abstractions;

namespace Crest.UnitTests;

/// <summary>
/// Image removal and garbage collection with containers holding leases, on the real <see cref="ImageService"/>
/// over in-memory content, metadata and snapshots and a registry in memory: no root, no network.
/// </summary>
public sealed class ImageGcTests : IDisposable
{
    private const string App = "localhost/unit/app:1";
    private const string Other = "localhost/unit/other:1";

    private readonly TempDir _dir = new();
    private readonly MemoryContentStore _content = new();
    private readonly MemoryImageMetadataStore _metadata = new();
    private readonly MemoryRegistry _registry = new();
    private readonly MemorySnapshotter _snapshots;
    private readonly ImageService _images;

    public ImageGcTests()
    {
        _snapshots = new MemorySnapshotter(_dir.Combine("snapshots"));
        _images = new ImageService(_content, _snapshots, _metadata, _registry, ImageServiceOptions.Default, TimeProvider.System, NullLogger<ImageService>.Instance);
        // Both images share their base layer, as images built FROM one base do.
        Publish(App, "app");
        Publish(Other, "other");
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private void Publish(string reference, string top)
    {
        var layout = _dir.Combine("layouts", top);
        TestImages.WriteLayout(layout,
        [
            new TestLayer(LayerCompression.None, t => TestImages.File(t, "base", "shared base layer"u8.ToArray())),
            new TestLayer(LayerCompression.Gzip, t => TestImages.File(t, top, Encoding.UTF8.GetBytes(top))),
        ]);
        _registry.Publish(reference, layout);
    }

    private Task<ImageRecord> PullAsync(string reference) => _images.PullAsync(reference, null, null, Ct);

    private async Task<bool> SnapshotExistsAsync(string key) =>
        await _snapshots.GetAsync(key, Ct) is { } s && Directory.Exists(Path.Combine(_snapshots.Root, s.Directory, "fs"));

    private bool AllBlobsStored(ImageRecord image) => image.Blobs.All(_content.Exists);

    private async Task<bool> WholeChainStoredAsync(ImageRecord image)
    {
        foreach (var key in image.LayerChainIds)
        {
            if (!await SnapshotExistsAsync(key))
            {
                return false;
            }
        }

        return true;
    }

    [Fact]
    public async Task A_leased_chain_outlives_its_image_until_the_last_container_lets_go()
    {
        var app = await PullAsync(App);
        await _images.LeaseAsync("container-1", App, Ct);
        await _images.LeaseAsync("container-2", App, Ct);
        await _images.RemoveAsync(App, Ct);

        await _metadata.RemoveSnapshotLeasesAsync("container-1", Ct);
        var whileOneHolds = await _images.CollectGarbageAsync(Ct);
        await _metadata.RemoveSnapshotLeasesAsync("container-2", Ct);
        var afterBoth = await _images.CollectGarbageAsync(Ct);

        Assert.Equal((0, 0), whileOneHolds);
        Assert.Equal((0, app.LayerChainIds.Count), afterBoth);
        Assert.Empty(await _snapshots.ListAsync(Ct));
    }

    [Fact]
    public async Task An_image_removed_while_leased_loses_its_blobs_and_name_but_keeps_its_snapshots_until_the_lease_goes()
    {
        var app = await PullAsync(App);
        await _images.LeaseAsync("container-1", App, Ct);

        Assert.True(await _images.RemoveAsync(App, Ct));

        Assert.Null(await _images.ResolveLocalAsync(App, Ct));
        Assert.DoesNotContain(app.Blobs, _content.Exists);
        // The container's rootfs still sits on the whole chain.
        Assert.Equal(app.LayerChainIds.Count, (await _snapshots.LowerDirsAsync(app.ChainId!, Ct)).Count);

        await _metadata.RemoveSnapshotLeasesAsync("container-1", Ct);
        var collected = await _images.CollectGarbageAsync(Ct);

        Assert.Equal((0, 2), collected);
        Assert.Empty(await _snapshots.ListAsync(Ct));
        Assert.Empty(Directory.EnumerateFileSystemEntries(_snapshots.Root));
    }

    [Fact]
    public async Task Once_the_lease_is_released_removing_the_image_collects_all_its_blobs_and_snapshots()
    {
        await PullAsync(App);
        await _images.LeaseAsync("container-1", App, Ct);
        await _metadata.RemoveSnapshotLeasesAsync("container-1", Ct);

        Assert.Equal((0, 0), await _images.CollectGarbageAsync(Ct));
        await _images.RemoveAsync(App, Ct);

        Assert.Empty(_content.List());
        Assert.Empty(await _snapshots.ListAsync(Ct));
        Assert.Empty(Directory.EnumerateFileSystemEntries(_snapshots.Root));
    }

    [Fact]
    public async Task Removing_one_image_keeps_the_base_layer_another_image_shares()
    {
        var app = await PullAsync(App);
        var other = await PullAsync(Other);
        var sharedBase = Assert.Single(app.LayerChainIds.Intersect(other.LayerChainIds));

        await _images.RemoveAsync(App, Ct);

        Assert.True(AllBlobsStored(other));
        Assert.True(await SnapshotExistsAsync(sharedBase));
        Assert.True(await SnapshotExistsAsync(other.ChainId!));
        Assert.False(await SnapshotExistsAsync(app.ChainId!));
    }

    [Fact]
    public async Task A_lease_on_the_top_snapshot_keeps_the_chain_below_it()
    {
        var app = await PullAsync(App);
        await _images.LeaseAsync("container-1", App, Ct);
        await _images.RemoveAsync(App, Ct);

        var lowerDirs = await _snapshots.LowerDirsAsync(app.ChainId!, Ct);

        Assert.Equal("shared base layer", await File.ReadAllTextAsync(Path.Combine(lowerDirs[^1], "base"), Ct));
        Assert.Equal("app", await File.ReadAllTextAsync(Path.Combine(lowerDirs[0], "app"), Ct));
    }

    [Fact]
    public async Task A_collection_that_starts_during_a_pull_waits_for_it_and_loses_no_blob()
    {
        var unpacking = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var mayUnpack = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _snapshots.BeforeFill = async (_, ct) =>
        {
            // Here the pull has stored its config and layer blobs, and no image record names them yet.
            unpacking.TrySetResult();
            await mayUnpack.Task.WaitAsync(ct);
        };
        var pull = PullAsync(App);
        await unpacking.Task.WaitAsync(Ct);
        Assert.NotEmpty(_content.List());

        var collection = _images.CollectGarbageAsync(Ct);
        Assert.False(collection.IsCompleted, "garbage collection ran while a pull held the images");
        mayUnpack.SetResult();
        var app = await pull;
        await collection;

        Assert.True(AllBlobsStored(app));
        Assert.True(await WholeChainStoredAsync(app));
        Assert.Equal(app.Id, (await _images.InspectAsync(App, Ct))?.Image.Id);
    }

    [Fact]
    public async Task Pulls_and_collections_interleaved_never_leave_a_pulled_image_without_its_blobs()
    {
        for (var round = 0; round < 20; round++)
        {
            var pulls = new[] { PullAsync(App), PullAsync(Other) };
            var collections = Enumerable.Range(0, 3).Select(_ => Task.Run(() => _images.CollectGarbageAsync(Ct), Ct)).ToList();
            var images = await Task.WhenAll(pulls);
            await Task.WhenAll(collections);

            foreach (var image in images)
            {
                Assert.True(AllBlobsStored(image), $"round {round}: image {image.Id} lost a blob");
                Assert.True(await WholeChainStoredAsync(image), $"round {round}: image {image.Id} lost a snapshot");
            }

            await _images.RemoveAsync(App, Ct);
            await _images.RemoveAsync(Other, Ct);
        }

        Assert.Empty(_content.List());
        Assert.Empty(await _snapshots.ListAsync(Ct));
    }

    public void Dispose() => _dir.Dispose();
}
