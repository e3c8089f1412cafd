using System.Text.Json;
using Crest.TestKit;

namespace Crest.E2ETests;

/// <summary>crest talks only CRI, so it must work against the peer runtime, containerd 2.1, unchanged.</summary>
public class CliAgainstContainerdTests
{
    [Fact]
    public async Task Crest_version_prints_containerds_version()
    {
        var containerd = Requires.Containerd();
        using var cni = new TempDir("crest-cni");
        CniFixture.WriteBridgeConflist(cni.Path);
        await using var peer = await ContainerdPeer.StartAsync(containerd, cni.Path, TimeSpan.FromSeconds(30));

        var (exit, stdout, stderr) = await Binaries.RunCrestAsync(["-r", peer.Endpoint, "version"]);

        Assert.True(exit == 0, stderr);
        Assert.Contains("RuntimeName:  containerd\n", stdout, StringComparison.Ordinal);
        Assert.Matches(@"RuntimeVersion:  v?2\.1\.", stdout);
        Assert.Contains("RuntimeApiVersion:  v1\n", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Crest_info_reads_containerds_status()
    {
        var containerd = Requires.Containerd();
        using var cni = new TempDir("crest-cni");
        CniFixture.WriteBridgeConflist(cni.Path);
        await using var peer = await ContainerdPeer.StartAsync(containerd, cni.Path, TimeSpan.FromSeconds(30));

        var (exit, stdout, stderr) = await Binaries.RunCrestAsync(["-r", peer.Endpoint, "info"]);

        Assert.True(exit == 0, stderr + stdout);
        using var doc = JsonDocument.Parse(stdout);
        var types = doc.RootElement.GetProperty("status").GetProperty("conditions").EnumerateArray().Select(c => c.GetProperty("type").GetString()).ToList();
        Assert.Contains("RuntimeReady", types);
        Assert.Contains("NetworkReady", types);
        // containerd's own verbose keys come through untouched.
        Assert.True(doc.RootElement.TryGetProperty("config", out _), stdout[..Math.Min(stdout.Length, 2000)]);
    }
}
