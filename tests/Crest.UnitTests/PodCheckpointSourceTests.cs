using System.Formats.Tar;
using System.IO.Compression;
using Crest.Checkpoint;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.TestKit;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>
/// RestorePod's checkpoint_path in its three forms: a directory read in place, an exported tar unpacked through the
/// safe extractor into a staging directory that goes away, and a local pod checkpoint image.
/// </summary>
public class PodCheckpointSourceTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static void WriteTar(string path, Action<TarWriter> write, bool gzip = false)
    {
        using var file = File.Create(path);
        using Stream stream = gzip ? new GZipStream(file, CompressionLevel.Fastest) : file;
        using var w = new TarWriter(stream, TarEntryFormat.Pax, leaveOpen: true);
        write(w);
    }

    private static void PodFiles(TarWriter t)
    {
        TestImages.Dir(t, "containers");
        TestImages.File(t, "containers/app.tar", "not really a tar"u8.ToArray(), mode: 0x180);
        TestImages.File(t, "pod.json", "{}"u8.ToArray(), mode: 0x180);
    }

    [Fact]
    public void A_directory_a_file_and_a_name_are_told_apart()
    {
        using var dir = new TempDir();
        var tar = dir.Combine("pod.tar");
        File.WriteAllBytes(tar, []);

        Assert.Equal(PodCheckpointSourceKind.Directory, PodCheckpointSources.Detect(dir.Path));
        Assert.Equal(PodCheckpointSourceKind.Archive, PodCheckpointSources.Detect(tar));
        Assert.Equal(PodCheckpointSourceKind.Image, PodCheckpointSources.Detect("localhost/checkpoints/web:1"));
    }

    [Fact]
    public void A_missing_path_or_a_link_is_refused_not_followed()
    {
        using var dir = new TempDir();
        var link = dir.Combine("link");
        File.CreateSymbolicLink(link, dir.Path);

        Assert.Contains("neither a directory nor a regular file", Assert.Throws<CrestException>(() => PodCheckpointSources.Detect(link)).Message);
        Assert.Throws<CrestException>(() => PodCheckpointSources.Detect(dir.Combine("absent")));
        Assert.Throws<CrestException>(() => PodCheckpointSources.Detect(" "));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task An_exported_tar_opens_as_a_staging_directory_that_goes_away(bool gzip)
    {
        using var dir = new TempDir();
        var tar = dir.Combine("pod.tar");
        WriteTar(tar, PodFiles, gzip);
        var restores = dir.Combine("restores");

        string staged;
        using (var opened = await PodCheckpointSources.OpenArchiveAsync(tar, restores, new RestoreLimits(), Ct))
        {
            staged = opened.Directory;
            Assert.StartsWith(restores + "/", staged, StringComparison.Ordinal);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(staged));
            Assert.Equal("{}", await File.ReadAllTextAsync(Path.Combine(staged, PodCheckpointFiles.Manifest), Ct));
            Assert.True(File.Exists(Path.Combine(staged, "containers/app.tar")));
        }

        Assert.False(Directory.Exists(staged));
        Assert.True(File.Exists(tar));
    }

    [Fact]
    public async Task A_tar_with_a_link_entry_is_refused_and_leaves_nothing()
    {
        using var dir = new TempDir();
        var tar = dir.Combine("pod.tar");
        WriteTar(tar, t =>
        {
            PodFiles(t);
            t.WriteEntry(new PaxTarEntry(TarEntryType.SymbolicLink, "containers/web.tar") { LinkName = "/etc/shadow" });
        });
        var restores = dir.Combine("restores");

        await Assert.ThrowsAsync<CrestException>(() => PodCheckpointSources.OpenArchiveAsync(tar, restores, new RestoreLimits(), Ct));

        Assert.Empty(Directory.EnumerateFileSystemEntries(restores));
    }

    [Fact]
    public async Task A_tar_with_a_path_escaping_through_dotdot_is_refused_and_writes_nothing_outside()
    {
        using var dir = new TempDir();
        var tar = dir.Combine("pod.tar");
        WriteTar(tar, t =>
        {
            PodFiles(t);
            TestImages.File(t, "../../escaped", "x"u8.ToArray());
        });
        var restores = dir.Combine("restores");

        await Assert.ThrowsAsync<CrestException>(() => PodCheckpointSources.OpenArchiveAsync(tar, restores, new RestoreLimits(), Ct));

        Assert.Empty(Directory.EnumerateFileSystemEntries(restores));
        Assert.False(File.Exists(dir.Combine("escaped")));
        Assert.False(File.Exists(Path.Combine(Path.GetDirectoryName(dir.Path)!, "escaped")));
    }

    [Fact]
    public async Task A_tar_larger_than_the_restore_caps_is_refused()
    {
        using var dir = new TempDir();
        var tar = dir.Combine("pod.tar");
        WriteTar(tar, t =>
        {
            PodFiles(t);
            TestImages.File(t, "pod/dev-shm.tar", new byte[4096]);
        });

        await Assert.ThrowsAsync<CrestException>(() => PodCheckpointSources.OpenArchiveAsync(tar, dir.Combine("restores"), new RestoreLimits { MaxArchiveBytes = 1024 }, Ct));
    }

    [Fact]
    public async Task A_local_pod_checkpoint_image_opens_as_its_layer_and_other_images_are_refused()
    {
        using var harness = new RuntimeHarness();
        await harness.ImportImageAsync(Ct);
        using var dir = new TempDir();
        var tar = dir.Combine("pod.tar");
        WriteTar(tar, PodFiles);
        await harness.Images.ImportRootfsAsync(tar, "localhost/checkpoints/web:1",
            new Dictionary<string, string> { [PodCheckpointFiles.ImageAnnotation] = "1", [PodCheckpointFiles.ImageContainersAnnotation] = "app" }, Ct);
        var sources = new PodCheckpointSources(harness.Images, harness.Paths, new RestoreOptions());

        string staged;
        using (var opened = await sources.OpenAsync("localhost/checkpoints/web:1", Ct))
        {
            Assert.Equal(PodCheckpointSourceKind.Image, opened.Kind);
            staged = opened.Directory;
            Assert.Equal("{}", await File.ReadAllTextAsync(Path.Combine(staged, PodCheckpointFiles.Manifest), Ct));
        }

        Assert.False(Directory.Exists(staged));
        var notPod = await Assert.ThrowsAsync<CrestException>(() => sources.OpenAsync(RuntimeHarness.Image, Ct));
        Assert.Contains(PodCheckpointFiles.ImageAnnotation, notPod.Message);
        Assert.Equal(ErrorKind.NotFound, (await Assert.ThrowsAsync<CrestException>(() => sources.OpenAsync("localhost/absent:1", Ct))).Kind);
    }
}
