using System.Diagnostics;
using System.Text.Json;
using Crest.TestKit;

namespace Crest.E2ETests;

/// <summary>The image verbs of the crest binary against the crestd binary and Debian's registry.</summary>
public class ImageCliTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<(LocalRegistry Registry, string Reference, string Manifest, TempDir Layout)> PushStandardAsync()
    {
        var registry = await LocalRegistry.StartAsync();
        var layout = new TempDir("crest-layout");
        var manifest = TestImages.WriteLayout(layout.Path, TestImages.StandardLayers(), "v1");
        await TestImages.PushAsync(layout.Path, "v1", $"{registry.Host}/e2e/busybox:v1");
        return (registry, $"{registry.Host}/e2e/busybox:v1", manifest, layout);
    }

    [Fact]
    public async Task Crest_pull_prints_progress_and_the_image_is_listed_with_its_digest()
    {
        Requires.Root();
        var (registry, reference, manifest, layout) = await PushStandardAsync();
        await using var _r = registry;
        using var _l = layout;
        using var dir = new TempDir("crest-e2e");
        await using var crestd = await CrestdProcess.StartReadyAsync(dir);

        var pull = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "pull", reference]);
        var images = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "images", "--digests"]);
        var json = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "images", "-o", "json"]);

        Assert.True(pull.ExitCode == 0, pull.Stderr);
        Assert.Contains(": downloading (", pull.Stdout, StringComparison.Ordinal);
        Assert.Contains(": done (", pull.Stdout, StringComparison.Ordinal);
        Assert.Matches(@"Image is up to date for sha256:[0-9a-f]{64}\n$", pull.Stdout);
        var lines = images.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Matches(@"^IMAGE\s+TAG\s+DIGEST\s+IMAGE ID\s+SIZE$", lines[0]);
        Assert.Matches($@"^{registry.Host}/e2e/busybox\s+v1\s+{manifest[7..20]}\s+[0-9a-f]{{13}}\s+[0-9.]+[kM]B$", lines[1]);
        using var doc = JsonDocument.Parse(json.Stdout);
        Assert.Equal($"{registry.Host}/e2e/busybox@{manifest}", doc.RootElement.GetProperty("images")[0].GetProperty("repoDigests")[0].GetString());
    }

    [Fact]
    public async Task Crest_inspecti_rmi_and_imagefsinfo()
    {
        Requires.Root();
        var (registry, reference, _, layout) = await PushStandardAsync();
        await using var _r = registry;
        using var _l = layout;
        using var dir = new TempDir("crest-e2e");
        await using var crestd = await CrestdProcess.StartReadyAsync(dir);
        await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "pull", reference]);

        var inspect = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "inspecti", reference]);
        var fsBefore = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "imagefsinfo"]);
        var rmi = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "rmi", reference]);
        var again = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "rmi", reference]);
        var fsAfter = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "imagefsinfo", "-o", "json"]);

        Assert.True(inspect.ExitCode == 0, inspect.Stderr);
        using (var doc = JsonDocument.Parse(inspect.Stdout))
        {
            Assert.Equal(reference, doc.RootElement.GetProperty("status").GetProperty("repoTags")[0].GetString());
            Assert.Equal(3, doc.RootElement.GetProperty("info").GetProperty("layers").GetArrayLength());
        }

        Assert.Equal($"Deleted: {reference}\n", rmi.Stdout.Split('\n')[0] + "\n");
        Assert.Equal(1, again.ExitCode);
        Assert.Contains($"no such image {reference}", again.Stderr, StringComparison.Ordinal);
        Assert.Empty(Directory.EnumerateFiles(Path.Combine(dir.Combine("root"), "content", "blobs", "sha256")));
        using var before = JsonDocument.Parse(fsBefore.Stdout);
        using var after = JsonDocument.Parse(fsAfter.Stdout);
        long Used(JsonDocument d) => long.Parse(d.RootElement.GetProperty("status").GetProperty("imageFilesystems")[0].GetProperty("usedBytes").GetProperty("value").GetString()!, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(Used(before) > 1_000_000);
        Assert.True(Used(after) < 1_000);
    }

    [Fact]
    public async Task Import_load_and_push_without_any_other_tool()
    {
        Requires.Root();
        await using var registry = await LocalRegistry.StartAsync();
        using var dir = new TempDir("crest-e2e");
        await using var crestd = await CrestdProcess.StartReadyAsync(dir);

        // import: a rootfs tarball, like podman import
        var rootfs = dir.Combine("rootfs.tar");
        await using (var f = File.Create(rootfs))
        await using (var t = new System.Formats.Tar.TarWriter(f, System.Formats.Tar.TarEntryFormat.Pax))
        {
            TestImages.Dir(t, "bin");
            TestImages.File(t, "bin/busybox", await File.ReadAllBytesAsync(TestImages.BusyboxStatic, Ct), mode: 0x1ED);
        }

        var import = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "image", "import", rootfs, "localhost/imported:v1"]);

        // load: an OCI layout archive
        var layout = dir.CreateDirectory("layout");
        TestImages.WriteLayout(layout, TestImages.StandardLayers(), "v2");
        var archive = dir.Combine("layout.tar");
        TestImages.TarDirectory(layout, archive);
        var load = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "image", "load", archive, $"{registry.Host}/pushed/app"]);

        // push: to the registry the name points at, then read back with an independent client
        var push = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "image", "push", $"{registry.Host}/pushed/app:v2"]);
        var images = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "images"]);

        Assert.True(import.ExitCode == 0, import.Stderr);
        Assert.True(load.ExitCode == 0, load.Stderr);
        Assert.Contains($"Loaded {registry.Host}/pushed/app:v2 sha256:", load.Stdout, StringComparison.Ordinal);
        Assert.True(push.ExitCode == 0, push.Stderr);
        Assert.Contains("localhost/imported", images.Stdout, StringComparison.Ordinal);
        var inspect = await Skopeo("inspect", "--tls-verify=false", $"docker://{registry.Host}/pushed/app:v2");
        using var doc = JsonDocument.Parse(inspect);
        Assert.Equal(3, doc.RootElement.GetProperty("Layers").GetArrayLength());
        Assert.Equal(push.Stdout.Trim().Split(' ')[^1], doc.RootElement.GetProperty("Digest").GetString());
    }

    [Fact]
    public async Task Loading_something_that_is_not_an_oci_layout_says_so()
    {
        using var dir = new TempDir("crest-e2e");
        await using var crestd = await CrestdProcess.StartReadyAsync(dir);
        var archive = dir.Combine("docker.tar");
        await using (var f = File.Create(archive))
        await using (var t = new System.Formats.Tar.TarWriter(f))
        {
            TestImages.File(t, "manifest.json", "[]"u8.ToArray());
        }

        var load = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "image", "load", archive, "x/y"]);

        Assert.Equal(1, load.ExitCode);
        Assert.Contains("is a docker-archive", load.Stderr, StringComparison.Ordinal);
    }

    private static async Task<string> Skopeo(params string[] args)
    {
        using var p = Process.Start(new ProcessStartInfo(Requires.Binary("skopeo"), args) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        var output = await p.StandardOutput.ReadToEndAsync();
        var error = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        Assert.True(p.ExitCode == 0, error);
        return output;
    }
}
