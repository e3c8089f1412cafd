using Crest.Core;
using Crest.Images;
using Crest.Oci;

namespace Crest.UnitTests;

public class ImageReferenceTests
{
    [Theory]
    [InlineData("busybox", "docker.io/library/busybox:latest")]
    [InlineData("busybox:1.36", "docker.io/library/busybox:1.36")]
    [InlineData("library/busybox", "docker.io/library/busybox:latest")]
    [InlineData("index.docker.io/user/app:v1", "docker.io/user/app:v1")]
    [InlineData("user/app", "docker.io/user/app:latest")]
    [InlineData("localhost/app", "localhost/app:latest")]
    [InlineData("127.0.0.1:5000/team/app:v2", "127.0.0.1:5000/team/app:v2")]
    [InlineData("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10")]
    [InlineData("[::1]:5000/app", "[::1]:5000/app:latest")]
    public void References_normalise_as_docker_does(string input, string expected) =>
        Assert.Equal(expected, ImageReference.Parse(input).ToString());

    [Fact]
    public void A_digest_pins_the_content_and_a_tag_beside_it_is_kept()
    {
        const string hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        var pinned = ImageReference.Parse($"busybox@sha256:{hex}");
        var both = ImageReference.Parse($"quay.io/x/y:v1@sha256:{hex}");

        Assert.Null(pinned.Tag);
        Assert.Equal($"docker.io/library/busybox@sha256:{hex}", pinned.ToString());
        Assert.Equal("v1", both.Tag);
        Assert.Equal("quay.io", both.Registry);
        Assert.Equal("quay.io/x/y:v1", both.TagReference);
    }

    [Theory]
    [InlineData("", "empty")]
    [InlineData("Busybox", "repository")]
    [InlineData("busybox:-bad", "tag")]
    [InlineData("busybox@sha256:abc", "digest")]
    [InlineData("a..b/c", "registry")]
    [InlineData("team/a..b", "repository")]
    public void Invalid_references_say_what_is_wrong(string input, string expected)
    {
        var e = Assert.Throws<CrestException>(() => ImageReference.Parse(input));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Docker_hub_is_contacted_at_its_api_host() =>
        Assert.Equal("registry-1.docker.io", ImageReference.Parse("busybox").RegistryHost);

    [Theory]
    [InlineData("127.0.0.1:5000", true)]
    [InlineData("127.8.9.1", true)]
    [InlineData("localhost:5000", true)]
    [InlineData("[::1]:5000", true)]
    [InlineData("10.0.0.1:5000", false)]
    [InlineData("quay.io", false)]
    public void Loopback_registries_are_recognised(string host, bool loopback) =>
        Assert.Equal(loopback, RegistryOptions.IsLoopback(host));

    [Fact]
    public void Chain_ids_follow_the_image_spec()
    {
        var a = Digest.Of("a"u8).ToString();
        var b = Digest.Of("b"u8).ToString();

        var chains = ImageService.ChainIds([a, b]);

        Assert.Equal(a, chains[0]);
        Assert.Equal(Digest.Of(System.Text.Encoding.ASCII.GetBytes($"{a} {b}")).ToString(), chains[1]);
    }

    [Fact]
    public void Bearer_challenges_are_parsed_with_quoted_commas()
    {
        var p = RegistryClient.ParseChallenge("realm=\"https://auth.example/token\",service=\"registry.example\",scope=\"repository:a/b:pull,push\"");

        Assert.Equal("https://auth.example/token", p["realm"]);
        Assert.Equal("registry.example", p["service"]);
        Assert.Equal("repository:a/b:pull,push", p["scope"]);
    }

    [Fact]
    public void The_platform_manifest_for_this_node_is_chosen_from_an_index()
    {
        Descriptor M(string arch, string? variant = null, string os = "linux") => new()
        {
            MediaType = MediaTypes.OciManifest,
            Digest = Digest.Of(System.Text.Encoding.UTF8.GetBytes(os + arch + variant)).ToString(),
            Platform = new Platform { Os = os, Architecture = arch, Variant = variant },
        };
        var index = new[] { M("arm64", "v8"), M("amd64", os: "windows"), M("amd64", "v3"), M("amd64") };

        Assert.Equal(index[3], Platforms.Choose(index, architecture: "amd64"));
        Assert.Equal(index[0], Platforms.Choose(index, architecture: "arm64"));
        Assert.Null(Platforms.Choose(index, architecture: "s390x"));
    }

    [Theory]
    [InlineData(new byte[] { 0x1f, 0x8b, 8, 0 }, Compression.Gzip)]
    [InlineData(new byte[] { 0x28, 0xb5, 0x2f, 0xfd }, Compression.Zstd)]
    [InlineData(new byte[] { (byte)'b', (byte)'i', (byte)'n', 0 }, Compression.None)]
    public void Compression_is_recognised_by_magic_bytes(byte[] head, Compression expected) =>
        Assert.Equal(expected, LayerStreams.Detect(head));
}
