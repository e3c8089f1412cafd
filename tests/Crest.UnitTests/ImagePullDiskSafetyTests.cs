using System.Text.Json.Nodes;
using Crest.Core;
using Crest.Images;
using Crest.Linux;
using Crest.TestKit;
using Crest.UnitTests.Fakes;
using Microsoft.Extensions.Logging.Abstractions;

namespace Crest.UnitTests;

/// <summary>
/// A pull never fills the node's disk: blobs that would not fit are refused before they are downloaded, and a layer
/// that unpacks past the snapshots' free space or too far per compressed byte (a decompression bomb) is stopped while
/// it unpacks. Free space comes through <see cref="ImageServiceOptions.FreeBytesOf"/>, so no disk is filled.
/// </summary>
public sealed class ImagePullDiskSafetyTests : IDisposable
{
    private const string Image = "localhost/unit/disk:1";
    private const long Reserve = 1 << 20;

    private readonly TempDir _dir = new();
    private readonly MemoryContentStore _content = new();
    private readonly MemoryImageMetadataStore _metadata = new();
    private readonly MemoryRegistry _registry = new();
    private readonly MemorySnapshotter _snapshots;

    public ImagePullDiskSafetyTests() => _snapshots = new MemorySnapshotter(_dir.Combine("snapshots"));

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public void Dispose() => _dir.Dispose();

    /// <summary>Publishes one image of <paramref name="layer"/> and returns the layer's and the config's digests.</summary>
    private (string Layer, string Config) Publish(TestLayer layer)
    {
        var layout = _dir.Combine("layout");
        TestImages.WriteLayout(layout, [layer]);
        _registry.Publish(Image, layout);
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(layout, "index.json")))!;
        var manifestHex = ((string)index["manifests"]![0]!["digest"]!)["sha256:".Length..];
        var manifest = JsonNode.Parse(File.ReadAllText(Path.Combine(layout, "blobs", "sha256", manifestHex)))!;
        return ((string)manifest["layers"]![0]!["digest"]!, (string)manifest["config"]!["digest"]!);
    }

    /// <summary>
    /// An image service whose disk budgets use <paramref name="ledger"/>, by default one of its own: free space here is
    /// faked, so other tests running in this process must not be counted on it.
    /// </summary>
    private ImageService Images(ImageServiceOptions options, DiskLedger? ledger = null) =>
        new(_content, _snapshots, _metadata, _registry, options with { Disks = ledger ?? new DiskLedger() }, TimeProvider.System, NullLogger<ImageService>.Instance);

    /// <summary>A root filesystem tarball of one file of <paramref name="size"/> zero bytes, gzip-compressed when asked.</summary>
    private string RootfsTar(int size, bool gzip)
    {
        using var plain = new MemoryStream();
        using (var t = new System.Formats.Tar.TarWriter(plain, leaveOpen: true))
        {
            TestImages.File(t, "zeros", new byte[size]);
        }

        var path = _dir.Combine(gzip ? "rootfs.tar.gz" : "rootfs.tar");
        File.WriteAllBytes(path, TestImages.Compress(plain.ToArray(), gzip ? LayerCompression.Gzip : LayerCompression.None).Blob);
        return path;
    }

    /// <summary>No image recorded, no snapshot recorded, no snapshot directory left.</summary>
    private async Task AssertNothingKeptAsync()
    {
        Assert.Empty(await _metadata.ListImagesAsync(Ct));
        Assert.Empty(await _snapshots.ListAsync(Ct));
        Assert.Empty(Directory.EnumerateFileSystemEntries(_snapshots.Root));
    }

    // 32 MiB of zeros: zstd compresses them past 10000:1; gzip at its fastest level (static Huffman codes) to about 150:1.
    [Theory]
    [InlineData(LayerCompression.Zstd, 200)]
    [InlineData(LayerCompression.Gzip, 50)]
    public async Task A_layer_that_expands_too_far_per_compressed_byte_is_stopped_while_it_unpacks_and_no_image_or_snapshot_is_kept(LayerCompression compression, int ratio)
    {
        var (layer, _) = Publish(new TestLayer(compression, t => TestImages.File(t, "zeros", new byte[32 << 20])));
        var images = Images(new ImageServiceOptions(new ExtractionLimits { MaxExpansionRatio = ratio, RatioCheckFloorBytes = 1 << 20 }));

        var bomb = await Assert.ThrowsAsync<CrestException>(() => images.PullAsync(Image, null, null, Ct));

        Assert.Equal(ErrorKind.InvalidArgument, bomb.Kind);
        Assert.Contains($"layer {layer} of image {Image} was refused at entry \"zeros\": the archive expands to more than ", bomb.Message, StringComparison.Ordinal);
        Assert.Contains($"compressed bytes, more than [images] max_expansion_ratio = {ratio} allows", bomb.Message, StringComparison.Ordinal);
        await AssertNothingKeptAsync();

        // The same layer from a source trusted with a higher ratio (0: no check) pulls.
        var trusted = Images(new ImageServiceOptions(new ExtractionLimits { MaxExpansionRatio = 0, RatioCheckFloorBytes = 1 << 20 }));
        var record = await trusted.PullAsync(Image, null, null, Ct);
        Assert.Single(await _snapshots.ListAsync(Ct));
        Assert.Equal(Image, record.RepoTags.Single());
    }

    [Fact]
    public async Task A_layer_that_would_not_fit_on_the_snapshots_disk_is_refused_before_its_file_is_written()
    {
        var (layer, _) = Publish(new TestLayer(LayerCompression.None, t => TestImages.File(t, "big", new byte[4 << 20])));
        var images = Images(new ImageServiceOptions(new ExtractionLimits { DiskReserveBytes = Reserve })
        {
            ContentFilesystem = _dir.Path,
            SnapshotFilesystem = _snapshots.Root,
            // The content store's disk is roomy; the snapshots' has 2 MiB left after the reserve.
            FreeBytesOf = path => path == _snapshots.Root ? Reserve + (2 << 20) : 1L << 40,
        });

        var full = await Assert.ThrowsAsync<CrestException>(() => images.PullAsync(Image, null, null, Ct));

        Assert.Equal(ErrorKind.ResourceExhausted, full.Kind);
        Assert.Contains($"layer {layer} of image {Image} was refused at entry \"big\" (4194304 bytes)", full.Message, StringComparison.Ordinal);
        Assert.Contains($"more than the 2097152 bytes free on {_snapshots.Root} after [images] disk_reserve_bytes = 1048576", full.Message, StringComparison.Ordinal);
        await AssertNothingKeptAsync();
    }

    [Fact]
    public async Task Layers_that_would_not_fit_in_the_content_store_are_refused_before_any_is_downloaded()
    {
        var (layer, _) = Publish(new TestLayer(LayerCompression.None, t => TestImages.File(t, "big", new byte[4 << 20])));
        var images = Images(new ImageServiceOptions(new ExtractionLimits { DiskReserveBytes = Reserve })
        {
            ContentFilesystem = _dir.Path,
            FreeBytesOf = _ => Reserve + (2 << 20),
        });

        var full = await Assert.ThrowsAsync<CrestException>(() => images.PullAsync(Image, null, null, Ct));

        Assert.Equal(ErrorKind.ResourceExhausted, full.Kind);
        Assert.Contains($"pull of image {Image} was refused before downloading its layers: the 1 layer not yet on this node ({layer}) declare ", full.Message, StringComparison.Ordinal);
        Assert.Contains($"more than the 2097152 bytes free on {_dir.Path} after [images] disk_reserve_bytes = 1048576", full.Message, StringComparison.Ordinal);
        Assert.False(_registry.BlobRequests.ContainsKey(Digest.Parse(layer)), "the layer must not be downloaded");
        Assert.False(_content.Exists(Digest.Parse(layer)));
        await AssertNothingKeptAsync();
    }

    [Fact]
    public async Task An_oci_archive_whose_blob_would_not_fit_in_the_content_store_is_refused_before_the_blob_is_stored()
    {
        var layout = _dir.Combine("layout");
        TestImages.WriteLayout(layout, [new TestLayer(LayerCompression.None, t => TestImages.File(t, "big", new byte[4 << 20]))]);
        var archive = _dir.Combine("image.tar");
        TestImages.TarDirectory(layout, archive);
        var images = Images(new ImageServiceOptions(new ExtractionLimits { DiskReserveBytes = Reserve })
        {
            ContentFilesystem = _dir.Path,
            FreeBytesOf = _ => Reserve + (2 << 20),
        });

        var full = await Assert.ThrowsAsync<CrestException>(() => images.LoadArchiveAsync(archive, Image, Ct));

        Assert.Equal(ErrorKind.ResourceExhausted, full.Kind);
        Assert.Contains($"load of archive {archive} was refused before storing blob sha256:", full.Message, StringComparison.Ordinal);
        Assert.Contains($"more than the 2097152 bytes free on {_dir.Path} after [images] disk_reserve_bytes = 1048576", full.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(_content.List(), d => _content.SizeOf(d) > 2 << 20);
        await AssertNothingKeptAsync();
    }

    [Fact]
    public async Task A_blob_larger_than_the_content_stores_free_space_is_refused_before_it_is_downloaded()
    {
        var (layer, config) = Publish(new TestLayer(LayerCompression.None, t => TestImages.File(t, "small", [1, 2, 3])));
        var images = Images(new ImageServiceOptions(new ExtractionLimits { DiskReserveBytes = Reserve })
        {
            ContentFilesystem = _dir.Path,
            // Ten bytes left: not even the image config fits.
            FreeBytesOf = _ => Reserve + 10,
        });

        var full = await Assert.ThrowsAsync<CrestException>(() => images.PullAsync(Image, null, null, Ct));

        Assert.Equal(ErrorKind.ResourceExhausted, full.Kind);
        Assert.Contains($"pull of image {Image} was refused before downloading blob {config}: it declares ", full.Message, StringComparison.Ordinal);
        Assert.Contains($"more than the 10 bytes free on {_dir.Path} after [images] disk_reserve_bytes = 1048576", full.Message, StringComparison.Ordinal);
        Assert.False(_registry.BlobRequests.ContainsKey(Digest.Parse(config)));
        await AssertNothingKeptAsync();
    }

    [Fact]
    public async Task A_pull_beside_another_that_holds_the_space_is_refused_before_any_download_and_pulls_once_that_one_ends()
    {
        var (layer, _) = Publish(new TestLayer(LayerCompression.None, t => TestImages.File(t, "big", new byte[4 << 20])));
        Func<string, long> sixMiB = _ => Reserve + (6 << 20);
        var ledger = new DiskLedger();
        var images = Images(new ImageServiceOptions(new ExtractionLimits { DiskReserveBytes = Reserve })
        {
            ContentFilesystem = _dir.Path,
            SnapshotFilesystem = _snapshots.Root,
            FreeBytesOf = sixMiB,
        }, ledger);

        // Another pull on the same disk has declared 3 MiB of layers it is still downloading: 4 MiB more does not fit in 6.
        var other = ledger.Open(_dir.Path, Reserve, "[images] disk_reserve_bytes", sixMiB);
        try
        {
            Assert.True(other.TryHold(3 << 20));
            var full = await Assert.ThrowsAsync<CrestException>(() => images.PullAsync(Image, null, null, Ct));

            Assert.Equal(ErrorKind.ResourceExhausted, full.Kind);
            Assert.Contains($"the 1 layer not yet on this node ({layer}) declare ", full.Message, StringComparison.Ordinal);
            Assert.Contains("and the 3145728 bytes that pulls and restores running beside it take there", full.Message, StringComparison.Ordinal);
            Assert.False(_registry.BlobRequests.ContainsKey(Digest.Parse(layer)), "the layer must not be downloaded");
        }
        finally
        {
            other.Dispose();
        }

        // Alone, the pull fits: its own held download does not count against its own unpack, and it closes its budgets.
        var record = await images.PullAsync(Image, null, null, Ct);
        Assert.Equal(Image, record.RepoTags.Single());
        Assert.Equal(0, ledger.OpenAccounts);
    }

    [Fact]
    public async Task An_imported_rootfs_that_expands_too_far_per_compressed_byte_is_stopped_while_it_streams_in()
    {
        var tar = RootfsTar(32 << 20, gzip: true);
        var images = Images(new ImageServiceOptions(new ExtractionLimits { MaxExpansionRatio = 50, RatioCheckFloorBytes = 1 << 20 }));

        var bomb = await Assert.ThrowsAsync<CrestException>(() => images.ImportRootfsAsync(tar, Image, Ct));

        Assert.Equal(ErrorKind.InvalidArgument, bomb.Kind);
        Assert.Contains($"rootfs archive {tar} was refused: it expands to more than ", bomb.Message, StringComparison.Ordinal);
        Assert.Contains("more than [images] max_expansion_ratio = 50 allows", bomb.Message, StringComparison.Ordinal);
        Assert.Empty(_content.List());
        await AssertNothingKeptAsync();
    }

    [Fact]
    public async Task An_imported_rootfs_that_would_not_fit_in_the_content_store_is_refused_as_it_streams_in()
    {
        var tar = RootfsTar(4 << 20, gzip: false);
        var ledger = new DiskLedger();
        var images = Images(new ImageServiceOptions(new ExtractionLimits { DiskReserveBytes = Reserve })
        {
            ContentFilesystem = _dir.Path,
            FreeBytesOf = _ => Reserve + (2 << 20),
        }, ledger);

        var full = await Assert.ThrowsAsync<CrestException>(() => images.ImportRootfsAsync(tar, Image, Ct));

        Assert.Equal(ErrorKind.ResourceExhausted, full.Kind);
        Assert.Contains($"rootfs archive {tar} was refused: it expands to at least ", full.Message, StringComparison.Ordinal);
        Assert.Contains($"more than the 2097152 bytes free on {_dir.Path} after [images] disk_reserve_bytes = 1048576", full.Message, StringComparison.Ordinal);
        Assert.Empty(_content.List());
        Assert.Equal(0, ledger.OpenAccounts);
        await AssertNothingKeptAsync();
    }
}
