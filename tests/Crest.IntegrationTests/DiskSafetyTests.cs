using System.Diagnostics;
using Crest.Core;
using Crest.TestKit;
using Grpc.Core;
using Runtime.V1;

namespace Crest.IntegrationTests;

/// <summary>
/// A pull that would not fit on the node's disk is refused with a message naming the layer and the setting, and
/// leaves nothing behind: crestd's root is a 64 MiB tmpfs the test mounts (root only) and unmounts at its end.
/// </summary>
public class DiskSafetyTests
{
    private const long Reserve = 8 << 20;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Pulls_that_would_not_fit_on_a_small_disk_are_refused_and_leave_it_as_it_was()
    {
        Requires.Root();
        await using var registry = await LocalRegistry.StartAsync();
        using var work = new TempDir("crest-disk");
        // 80 MiB in one layer: stored as it is (declared 80 MiB), and as gzip (about half a MiB that unpacks to 80 MiB).
        var plain = await PushAsync(registry, work, "plain", LayerCompression.None);
        var bomb = await PushAsync(registry, work, "bomb", LayerCompression.Gzip);
        var root = work.CreateDirectory("root");
        await RunAsync("mount", "-t", "tmpfs", "-o", "size=64m,mode=0711", "tmpfs", root);
        try
        {
            await using (var d = await DaemonHarness.StartAsync(c => c with
            {
                Paths = new CrestPaths(root, c.Paths.State, c.Paths.Socket),
                Images = c.Images with { DiskReserveBytes = Reserve },
            }))
            {
                var paths = d.Daemon.Config.Paths;
                var freeBefore = new DriveInfo(root).AvailableFreeSpace;

                var declared = await Assert.ThrowsAsync<RpcException>(() => d.Images.PullImageAsync(Pull(plain), cancellationToken: Ct).ResponseAsync);
                var unpacked = await Assert.ThrowsAsync<RpcException>(() => d.Images.PullImageAsync(Pull(bomb), cancellationToken: Ct).ResponseAsync);

                Assert.Equal(StatusCode.ResourceExhausted, declared.StatusCode);
                Assert.Contains($"pull of image {plain} was refused before downloading its layers: the 1 layer not yet on this node", declared.Status.Detail, StringComparison.Ordinal);
                Assert.Contains($"bytes free on {paths.Content} after [images] disk_reserve_bytes = {Reserve}", declared.Status.Detail, StringComparison.Ordinal);
                Assert.Equal(StatusCode.ResourceExhausted, unpacked.StatusCode);
                Assert.Contains($"of image {bomb} was refused at entry \"zeros\" (83886080 bytes)", unpacked.Status.Detail, StringComparison.Ordinal);
                Assert.Contains($"bytes free on {paths.Snapshots} after [images] disk_reserve_bytes = {Reserve}", unpacked.Status.Detail, StringComparison.Ordinal);

                Assert.Empty((await d.Images.ListImagesAsync(new ListImagesRequest(), cancellationToken: Ct)).Images);
                Assert.Empty(Directory.EnumerateFileSystemEntries(paths.Snapshots));
                Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(paths.Content, "ingest")));
                // What is left are the small manifests and configs and the bomb's half-MiB blob, for image GC to collect.
                var used = freeBefore - new DriveInfo(root).AvailableFreeSpace;
                Assert.True(used < 2 << 20, $"the refused pulls used {used} bytes of the disk");
            }
        }
        finally
        {
            // A stopped daemon holds crest.db no longer (its store closes its pooled connections), so the tmpfs unmounts.
            await RunAsync("umount", root);
        }
    }

    [Fact]
    public async Task A_checkpoint_archive_that_would_not_fit_on_a_small_staging_disk_is_refused_before_its_pages_are_written()
    {
        Requires.Root();
        using var work = new TempDir("crest-disk");
        var archive = work.Combine("checkpoint.tar");
        await using (var file = File.Create(archive))
        await using (var tar = new System.Formats.Tar.TarWriter(file))
        {
            var pages = new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.RegularFile, "checkpoint/pages-1.img")
            {
                DataStream = new MemoryStream(new byte[80 << 20]),
            };
            await tar.WriteEntryAsync(pages, Ct);
        }

        var disk = work.CreateDirectory("disk");
        await RunAsync("mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", disk);
        try
        {
            var staging = Directory.CreateDirectory(Path.Combine(disk, "staging")).FullName;
            var limits = new Crest.Checkpoint.Format.RestoreLimits { TargetFilesystem = disk, DiskReserveBytes = Reserve };

            var full = await Assert.ThrowsAsync<CrestException>(() => new Crest.Checkpoint.Format.CheckpointReader(limits).ReadArchiveAsync(archive, staging, Ct));

            Assert.Equal(ErrorKind.ResourceExhausted, full.Kind);
            Assert.Contains($"checkpoint archive {archive} was refused at entry \"checkpoint/pages-1.img\" (83886080 bytes)", full.Message, StringComparison.Ordinal);
            Assert.Contains($"bytes free on {staging} after [restore] disk_reserve_bytes = {Reserve}", full.Message, StringComparison.Ordinal);
            Assert.False(File.Exists(Path.Combine(staging, "checkpoint", "pages-1.img")), "no byte of the pages may be written");
        }
        finally
        {
            await RunAsync("umount", disk);
        }
    }

    private static PullImageRequest Pull(string image) => new() { Image = new ImageSpec { Image = image } };

    private static async Task<string> PushAsync(LocalRegistry registry, TempDir work, string name, LayerCompression compression)
    {
        var layout = work.CreateDirectory("layout-" + name);
        TestImages.WriteLayout(layout, [new TestLayer(compression, t => TestImages.File(t, "zeros", new byte[80 << 20]))], "v1");
        var reference = $"{registry.Host}/disk/{name}:v1";
        await TestImages.PushAsync(layout, "v1", reference);
        return reference;
    }

    private static async Task RunAsync(string file, params string[] args)
    {
        using var p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardError = true })!;
        var err = await p.StandardError.ReadToEndAsync(Ct);
        await p.WaitForExitAsync(Ct);
        Assert.True(p.ExitCode == 0, $"{file} {string.Join(' ', args)}: {err}");
    }
}
