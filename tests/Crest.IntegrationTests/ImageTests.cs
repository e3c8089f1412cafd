using System.Diagnostics;
using System.Text.Json;
using Crest.Core;
using Crest.Images;
using Crest.TestKit;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using Runtime.V1;

namespace Crest.IntegrationTests;

/// <summary>Images through the CRI ImageService against Debian's registry on 127.0.0.1 (and a fake one for faults).</summary>
public class ImageTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<(LocalRegistry Registry, string Reference, string ManifestDigest, TempDir Layout)> PushStandardAsync(
        string repo = "test/busybox", string? user = null, string? password = null)
    {
        var registry = await LocalRegistry.StartAsync(user, password);
        var layout = new TempDir("crest-layout");
        var digest = TestImages.WriteLayout(layout.Path, TestImages.StandardLayers(), "v1");
        await TestImages.PushAsync(layout.Path, "v1", $"{registry.Host}/{repo}:v1", user is null ? null : $"{user}:{password}");
        return (registry, $"{registry.Host}/{repo}:v1", digest, layout);
    }

    private static PullImageRequest Pull(string image, AuthConfig? auth = null) => new() { Image = new ImageSpec { Image = image }, Auth = auth };

    [Fact]
    public async Task A_pulled_image_is_listed_with_its_tag_digest_and_size()
    {
        Requires.Root();
        var (registry, reference, manifest, layout) = await PushStandardAsync();
        await using var _ = registry;
        using var __ = layout;
        await using var d = await DaemonHarness.StartAsync();

        var pulled = await d.Images.PullImageAsync(Pull(reference), cancellationToken: Ct);
        var list = await d.Images.ListImagesAsync(new ListImagesRequest(), cancellationToken: Ct);

        var image = Assert.Single(list.Images);
        Assert.Equal(pulled.ImageRef, image.Id);
        Assert.Equal([reference], image.RepoTags);
        Assert.Equal([$"{registry.Host}/test/busybox@{manifest}"], image.RepoDigests);
        Assert.True(image.Size > 500_000, $"size {image.Size}");
        Assert.Equal(0, image.Uid.Value);
    }

    [Fact]
    public async Task The_layers_stack_into_the_filesystem_the_image_describes()
    {
        Requires.Root();
        var (registry, reference, _, layout) = await PushStandardAsync();
        await using var _r = registry;
        using var _l = layout;
        await using var d = await DaemonHarness.StartAsync();
        await d.Images.PullImageAsync(Pull(reference), cancellationToken: Ct);
        var images = d.Daemon.Services.GetRequiredService<Crest.Images.ImageService>();
        var record = (await images.ResolveLocalAsync(reference, Ct))!;
        var lower = await images.Snapshots.LowerDirsAsync(record.ChainId!, Ct);

        using var mount = await OverlayMount.MountAsync(lower, d.Dir.CreateDirectory("merged"));

        var root = mount.Path;
        Assert.False(File.Exists(Path.Combine(root, "etc/motd")), "the zstd layer's whiteout hides /etc/motd");
        Assert.Equal("hello from layer 2\n", await File.ReadAllTextAsync(Path.Combine(root, "etc/hello"), Ct));
        Assert.False(File.Exists(Path.Combine(root, "data/old")), "the opaque directory hides the lower /data");
        Assert.True(File.Exists(Path.Combine(root, "data/new")));
        Assert.Equal("busybox", new FileInfo(Path.Combine(root, "bin/sh")).LinkTarget);
        var owned = await Run("stat", "-c", "%u:%g %a", Path.Combine(root, "etc/owned"));
        Assert.Equal("1234:4321 644", owned.Trim());
        var links = await Run("stat", "-c", "%h", Path.Combine(root, "bin/cat"));
        Assert.Equal("2", links.Trim());
        var echo = await Run(Path.Combine(root, "bin/busybox"), "echo", "runs");
        Assert.Equal("runs", echo.Trim());
    }

    [Fact]
    public async Task ImageStatus_describes_a_pulled_image_and_answers_empty_for_a_missing_one()
    {
        Requires.Root();
        var (registry, reference, _, layout) = await PushStandardAsync();
        await using var _r = registry;
        using var _l = layout;
        await using var d = await DaemonHarness.StartAsync();
        var pulled = await d.Images.PullImageAsync(Pull(reference), cancellationToken: Ct);

        var byTag = await d.Images.ImageStatusAsync(new ImageStatusRequest { Image = new ImageSpec { Image = reference }, Verbose = true }, cancellationToken: Ct);
        var byId = await d.Images.ImageStatusAsync(new ImageStatusRequest { Image = new ImageSpec { Image = pulled.ImageRef } }, cancellationToken: Ct);
        var byShortId = await d.Images.ImageStatusAsync(new ImageStatusRequest { Image = new ImageSpec { Image = pulled.ImageRef[7..19] } }, cancellationToken: Ct);
        var missing = await d.Images.ImageStatusAsync(new ImageStatusRequest { Image = new ImageSpec { Image = "nothere:v9" } }, cancellationToken: Ct);

        Assert.Equal(pulled.ImageRef, byTag.Image.Id);
        Assert.Equal(pulled.ImageRef, byId.Image.Id);
        Assert.Equal(pulled.ImageRef, byShortId.Image.Id);
        Assert.Null(missing.Image);
        using var info = JsonDocument.Parse(byTag.Info["info"]);
        Assert.Equal(3, info.RootElement.GetProperty("layers").GetArrayLength());
        Assert.Equal("/bin/sh", info.RootElement.GetProperty("imageSpec").GetProperty("config").GetProperty("Cmd")[0].GetString());
    }

    [Fact]
    public async Task Pulling_by_digest_and_an_unknown_tag()
    {
        Requires.Root();
        var (registry, reference, manifest, layout) = await PushStandardAsync();
        await using var _r = registry;
        using var _l = layout;
        await using var d = await DaemonHarness.StartAsync();

        var byDigest = await d.Images.PullImageAsync(Pull($"{registry.Host}/test/busybox@{manifest}"), cancellationToken: Ct);
        var unknown = await Assert.ThrowsAsync<RpcException>(() => d.Images.PullImageAsync(Pull($"{registry.Host}/test/busybox:nope"), cancellationToken: Ct).ResponseAsync);

        Assert.StartsWith("sha256:", byDigest.ImageRef, StringComparison.Ordinal);
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
        Assert.Contains("test/busybox:nope was not found", unknown.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_registry_with_htpasswd_needs_credentials_from_the_request_or_the_config()
    {
        Requires.Root();
        var (registry, reference, _, layout) = await PushStandardAsync("auth/busybox", "alice", "s3cret");
        await using var _r = registry;
        using var _l = layout;
        await using var anonymous = await DaemonHarness.StartAsync();
        await using var configured = await DaemonHarness.StartAsync(c => c with
        {
            Registries = new RegistryOptions(new Dictionary<string, RegistryHostOptions> { [registry.Host] = new() { Username = "alice", Password = "s3cret" } }),
        });

        var denied = await Assert.ThrowsAsync<RpcException>(() => anonymous.Images.PullImageAsync(Pull(reference), cancellationToken: Ct).ResponseAsync);
        var wrong = await Assert.ThrowsAsync<RpcException>(() => anonymous.Images.PullImageAsync(
            Pull(reference, new AuthConfig { Username = "alice", Password = "wrong" }), cancellationToken: Ct).ResponseAsync);
        var withAuth = await anonymous.Images.PullImageAsync(Pull(reference, new AuthConfig
        {
            Auth = Convert.ToBase64String("alice:s3cret"u8.ToArray()),
        }), cancellationToken: Ct);
        var fromConfig = await configured.Images.PullImageAsync(Pull(reference), cancellationToken: Ct);

        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
        Assert.Contains("requires a username and password", denied.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.PermissionDenied, wrong.StatusCode);
        Assert.Equal(withAuth.ImageRef, fromConfig.ImageRef);
    }

    [Fact]
    public async Task A_bearer_token_service_is_followed_with_the_credentials()
    {
        Requires.Root();
        using var layout = new TempDir("crest-layout");
        TestImages.WriteLayout(layout.Path, TestImages.StandardLayers(), "v1");
        using var fake = new FakeRegistry(layout.Path, "tok/busybox") { BearerCredentials = ("bob", "pw") };
        await using var d = await DaemonHarness.StartAsync();

        var denied = await Assert.ThrowsAsync<RpcException>(() => d.Images.PullImageAsync(Pull($"{fake.Host}/tok/busybox:v1"), cancellationToken: Ct).ResponseAsync);
        var pulled = await d.Images.PullImageAsync(Pull($"{fake.Host}/tok/busybox:v1", new AuthConfig { Username = "bob", Password = "pw" }), cancellationToken: Ct);

        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
        Assert.Contains("token service", denied.Status.Detail, StringComparison.Ordinal);
        Assert.StartsWith("sha256:", pulled.ImageRef, StringComparison.Ordinal);
        Assert.True(fake.Requests.GetValueOrDefault("/token") >= 1);
    }

    [Fact]
    public async Task A_corrupt_blob_is_named_and_nothing_is_stored()
    {
        Requires.Root();
        var (registry, reference, manifest, layout) = await PushStandardAsync();
        await using var _r = registry;
        using var _l = layout;
        var manifestJson = JsonDocument.Parse(await File.ReadAllBytesAsync(Path.Combine(layout.Path, "blobs", "sha256", manifest[7..]), Ct));
        var layer = manifestJson.RootElement.GetProperty("layers")[0].GetProperty("digest").GetString()!;
        var data = registry.BlobDataPath(layer);
        var bytes = await File.ReadAllBytesAsync(data, Ct);
        bytes[bytes.Length / 2] ^= 0xff;
        await File.WriteAllBytesAsync(data, bytes, Ct);
        await using var d = await DaemonHarness.StartAsync();

        var e = await Assert.ThrowsAsync<RpcException>(() => d.Images.PullImageAsync(Pull(reference), cancellationToken: Ct).ResponseAsync);

        Assert.Contains($"blob {layer} failed verification", e.Status.Detail, StringComparison.Ordinal);
        Assert.Empty((await d.Images.ListImagesAsync(new ListImagesRequest(), cancellationToken: Ct)).Images);
        Assert.False(File.Exists(Path.Combine(d.Daemon.Config.Paths.Content, "blobs", "sha256", layer[7..])));
        Assert.Empty(Directory.EnumerateFiles(Path.Combine(d.Daemon.Config.Paths.Content, "ingest")));
    }

    [Fact]
    public async Task A_transfer_cut_mid_blob_fails_after_retries_and_leaves_no_partial_blob()
    {
        Requires.Root();
        using var layout = new TempDir("crest-layout");
        var manifest = TestImages.WriteLayout(layout.Path, TestImages.StandardLayers(), "v1");
        var layer = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(layout.Path, "blobs", "sha256", manifest[7..])))
            .RootElement.GetProperty("layers")[0].GetProperty("digest").GetString()!;
        using var fake = new FakeRegistry(layout.Path, "cut/busybox") { CutBlob = (layer, 10_000) };
        await using var d = await DaemonHarness.StartAsync();

        var e = await Assert.ThrowsAsync<RpcException>(() => d.Images.PullImageAsync(Pull($"{fake.Host}/cut/busybox:v1"), cancellationToken: Ct).ResponseAsync);

        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Contains(layer, e.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(3, fake.Requests[$"/v2/cut/busybox/blobs/{layer}"]);
        Assert.Empty(Directory.EnumerateFiles(Path.Combine(d.Daemon.Config.Paths.Content, "ingest")));
        Assert.Empty((await d.Images.ListImagesAsync(new ListImagesRequest(), cancellationToken: Ct)).Images);
    }

    [Fact]
    public async Task A_stopped_registry_is_reported_as_unavailable()
    {
        Requires.Root();
        var (registry, reference, _, layout) = await PushStandardAsync();
        await using var _r = registry;
        using var _l = layout;
        await registry.StopProcessAsync();
        await using var d = await DaemonHarness.StartAsync();

        var e = await Assert.ThrowsAsync<RpcException>(() => d.Images.PullImageAsync(Pull(reference), cancellationToken: Ct).ResponseAsync);

        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Contains($"registry {registry.Host}", e.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("unreachable", e.Status.Detail, StringComparison.Ordinal);
        // crestd answered it: the trailer tells a client (crest migrate) that this node is up and its registry is not.
        Assert.Equal("Unavailable", e.Trailers.GetValue("crest-error-kind"));
    }

    [Fact]
    public async Task Two_pulls_of_one_image_at_once_share_the_transfer()
    {
        Requires.Root();
        using var layout = new TempDir("crest-layout");
        var manifest = TestImages.WriteLayout(layout.Path, TestImages.StandardLayers(), "v1");
        using var fake = new FakeRegistry(layout.Path, "shared/busybox") { BlobDelay = TimeSpan.FromMilliseconds(300) };
        await using var d = await DaemonHarness.StartAsync();

        var first = d.Images.PullImageAsync(Pull($"{fake.Host}/shared/busybox:v1"), cancellationToken: Ct).ResponseAsync;
        var second = d.Images.PullImageAsync(Pull($"{fake.Host}/shared/busybox:v1"), cancellationToken: Ct).ResponseAsync;
        var results = await Task.WhenAll(first, second);

        Assert.Equal(results[0].ImageRef, results[1].ImageRef);
        Assert.Equal(1, fake.Requests[$"/v2/shared/busybox/manifests/v1"]);
        Assert.All(fake.Requests.Where(r => r.Key.Contains("/blobs/", StringComparison.Ordinal)), r => Assert.Equal(1, r.Value));
    }

    [Theory]
    [InlineData("dotdot")]
    [InlineData("absolute")]
    [InlineData("symlink")]
    public async Task A_hostile_layer_is_refused_and_leaves_nothing_behind(string attack)
    {
        Requires.Root();
        using var outside = new TempDir("crest-outside");
        using var layout = new TempDir("crest-layout");
        TestLayer hostile = attack switch
        {
            "dotdot" => new(LayerCompression.Gzip, t => TestImages.File(t, "../../../../../../" + outside.Path.TrimStart('/') + "/pwned", "x"u8.ToArray())),
            "absolute" => new(LayerCompression.Gzip, t => TestImages.File(t, outside.Path + "/pwned", "x"u8.ToArray())),
            _ => new(LayerCompression.Gzip, t =>
            {
                TestImages.Symlink(t, "evil", outside.Path);
                TestImages.File(t, "evil/pwned", "x"u8.ToArray());
            }),
        };
        TestImages.WriteLayout(layout.Path, [TestImages.StandardLayers()[0], hostile], "v1");
        using var fake = new FakeRegistry(layout.Path, "hostile/img");
        await using var d = await DaemonHarness.StartAsync();

        var e = await Assert.ThrowsAsync<RpcException>(() => d.Images.PullImageAsync(Pull($"{fake.Host}/hostile/img:v1"), cancellationToken: Ct).ResponseAsync);

        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("was refused at entry", e.Status.Detail, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(outside.Path, "pwned")));
        Assert.Empty((await d.Images.ListImagesAsync(new ListImagesRequest(), cancellationToken: Ct)).Images);
        // Only the good first layer's snapshot may remain; no temporary directory does.
        Assert.DoesNotContain(Directory.EnumerateDirectories(d.Daemon.Config.Paths.Snapshots), p => Path.GetFileName(p).StartsWith(".tmp", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Removing_an_image_collects_its_blobs_and_snapshots()
    {
        Requires.Root();
        var (registry, reference, _, layout) = await PushStandardAsync();
        await using var _r = registry;
        using var _l = layout;
        await using var d = await DaemonHarness.StartAsync();
        await d.Images.PullImageAsync(Pull(reference), cancellationToken: Ct);
        var before = await d.Images.ImageFsInfoAsync(new ImageFsInfoRequest(), cancellationToken: Ct);

        await d.Images.RemoveImageAsync(new RemoveImageRequest { Image = new ImageSpec { Image = reference } }, cancellationToken: Ct);
        await d.Images.RemoveImageAsync(new RemoveImageRequest { Image = new ImageSpec { Image = reference } }, cancellationToken: Ct);
        var after = await d.Images.ImageFsInfoAsync(new ImageFsInfoRequest(), cancellationToken: Ct);

        Assert.Empty((await d.Images.ListImagesAsync(new ListImagesRequest(), cancellationToken: Ct)).Images);
        Assert.Empty(Directory.EnumerateFiles(Path.Combine(d.Daemon.Config.Paths.Content, "blobs", "sha256")));
        Assert.Empty(Directory.EnumerateDirectories(d.Daemon.Config.Paths.Snapshots));
        Assert.True(before.ImageFilesystems[0].UsedBytes.Value > 1_000_000);
        Assert.True(after.ImageFilesystems[0].UsedBytes.Value < 1_000, $"{after.ImageFilesystems[0].UsedBytes.Value} bytes left");
    }

    [Fact]
    public async Task Snapshots_a_container_holds_stay_when_its_image_is_removed()
    {
        Requires.Root();
        var (registry, reference, _, layout) = await PushStandardAsync();
        await using var _r = registry;
        using var _l = layout;
        await using var d = await DaemonHarness.StartAsync();
        await d.Images.PullImageAsync(Pull(reference), cancellationToken: Ct);
        var images = d.Daemon.Services.GetRequiredService<Crest.Images.ImageService>();
        var record = (await images.ResolveLocalAsync(reference, Ct))!;
        var metadata = d.Daemon.Services.GetRequiredService<IImageMetadataStore>();
        // What the container service records when it creates a container on this image.
        await metadata.AddSnapshotLeaseAsync("container-1", record.ChainId!, Ct);

        await d.Images.RemoveImageAsync(new RemoveImageRequest { Image = new ImageSpec { Image = reference } }, cancellationToken: Ct);

        Assert.Equal(3, (await images.Snapshots.LowerDirsAsync(record.ChainId!, Ct)).Count);
        await metadata.RemoveSnapshotLeasesAsync("container-1", Ct);
        await images.CollectGarbageAsync(Ct);
        Assert.Empty(Directory.EnumerateDirectories(d.Daemon.Config.Paths.Snapshots));
    }

    [Fact]
    public async Task A_mirror_serves_a_docker_hub_name()
    {
        Requires.Root();
        var (registry, _, _, layout) = await PushStandardAsync("library/mirrored");
        await using var _r = registry;
        using var _l = layout;
        await using var d = await DaemonHarness.StartAsync(c => c with
        {
            Registries = new RegistryOptions(new Dictionary<string, RegistryHostOptions>
            {
                ["docker.io"] = new() { Mirrors = [new Uri($"http://{registry.Host}")] },
            }),
        });

        await d.Images.PullImageAsync(Pull("mirrored:v1"), cancellationToken: Ct);

        var image = Assert.Single((await d.Images.ListImagesAsync(new ListImagesRequest(), cancellationToken: Ct)).Images);
        Assert.Equal(["docker.io/library/mirrored:v1"], image.RepoTags);
    }

    private static async Task<string> Run(string program, params string[] args)
    {
        using var p = Process.Start(new ProcessStartInfo(program, args) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        var output = await p.StandardOutput.ReadToEndAsync();
        var error = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        Assert.True(p.ExitCode == 0, $"{program} {string.Join(' ', args)}: {error}");
        return output;
    }
}

/// <summary>A read-only overlay mount of a snapshot chain, unmounted on dispose.</summary>
internal sealed class OverlayMount : IDisposable
{
    private OverlayMount(string path) => Path = path;

    public string Path { get; }

    public static async Task<OverlayMount> MountAsync(IReadOnlyList<string> lowerTopFirst, string target)
    {
        var lower = string.Join(':', lowerTopFirst);
        // A single lower dir cannot be an overlay on its own; bind it instead.
        var args = lowerTopFirst.Count == 1
            ? new[] { "--bind", "-o", "ro", lowerTopFirst[0], target }
            : new[] { "-t", "overlay", "overlay", "-o", $"lowerdir={lower}", target };
        using var p = Process.Start(new ProcessStartInfo("mount", args) { RedirectStandardError = true })!;
        var error = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        Assert.True(p.ExitCode == 0, $"mount failed: {error}");
        return new OverlayMount(target);
    }

    public void Dispose()
    {
        using var p = Process.Start(new ProcessStartInfo("umount", [Path]))!;
        p.WaitForExit();
    }
}
