using System.Text.Json.Nodes;
using Crest.Core;
using Crest.Runtime;
using Crest.TestKit;

namespace Crest.UnitTests;

/// <summary>
/// A pod that asks for its address (<see cref="PodAnnotations.NetworkIps"/>, as a migration that keeps the address does):
/// the addresses reach the plugins that declare the ips capability as runtimeConfig.ips, and a network that has none is refused.
/// </summary>
public sealed class CniRequestedIpsTests : IDisposable
{
    private readonly TempDir _dir = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Plays bridge (an address on ADD) and records each plugin's stdin.</summary>
    private sealed class RecordingPlugins : ICommandRunner
    {
        public List<(string Plugin, string Command, JsonObject Stdin)> Calls { get; } = [];

        public Task<CommandResult> RunAsync(CommandLine command, CancellationToken ct)
        {
            var plugin = Path.GetFileName(command.Program);
            Calls.Add((plugin, command.Environment!["CNI_COMMAND"], JsonNode.Parse(command.StandardInput!)!.AsObject()));
            var stdout = command.Environment!["CNI_COMMAND"] == "ADD" && plugin == "bridge"
                ? """{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.124.0.9/16","interface":0}]}"""
                : "";
            return Task.FromResult(new CommandResult(0, stdout, ""));
        }
    }

    private CniNetwork Network(RecordingPlugins plugins, bool ipsCapability)
    {
        var bin = _dir.CreateDirectory("bin");
        foreach (var p in new[] { "bridge", "portmap", "loopback" })
        {
            File.WriteAllText(Path.Combine(bin, p), "");
        }

        var capability = ipsCapability ? """, "capabilities": { "ips": true }""" : "";
        var confDir = _dir.CreateDirectory("net.d");
        File.WriteAllText(Path.Combine(confDir, "10-node.conflist"), $$"""
            {
              "cniVersion": "1.0.0",
              "name": "node",
              "plugins": [
                { "type": "bridge", "bridge": "cr0", "isGateway": true, "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.124.0.0/16" }]] }{{capability}} },
                { "type": "portmap", "capabilities": { "portMappings": true } },
                { "type": "loopback" }
              ]
            }
            """);
        return new CniNetwork(new CniOptions(confDir, [bin]), plugins);
    }

    private static PodSpec Pod(string? ips, params PortMapping[] ports) => new()
    {
        Name = "web",
        Uid = "u1",
        Namespace = "default",
        PortMappings = ports,
        Annotations = ips is null ? new Dictionary<string, string>() : new Dictionary<string, string> { [PodAnnotations.NetworkIps] = ips },
    };

    [Fact]
    public async Task The_asked_for_address_reaches_the_plugin_with_the_ips_capability_only_on_add_and_del()
    {
        var plugins = new RecordingPlugins();
        var network = Network(plugins, ipsCapability: true);
        var pod = Pod("10.124.0.9, 10.124.0.10/16", new PortMapping("TCP", 80, 8080, null));

        var attachment = await network.AddAsync("s1", _dir.Combine("netns"), pod, Ct);
        await network.DelAsync("s1", _dir.Combine("netns"), pod, attachment.Result, attachment.Config, Ct);

        Assert.Equal(["10.124.0.9"], attachment.Ips);
        foreach (var command in new[] { "ADD", "DEL" })
        {
            var bridge = plugins.Calls.Single(c => c.Plugin == "bridge" && c.Command == command).Stdin;
            Assert.Equal(["10.124.0.9", "10.124.0.10/16"], bridge["runtimeConfig"]!["ips"]!.AsArray().Select(n => (string)n!));
            // portmap declares portMappings, not ips: it gets its mappings and no address.
            var portmap = plugins.Calls.Single(c => c.Plugin == "portmap" && c.Command == command).Stdin;
            Assert.Null(portmap["runtimeConfig"]!["ips"]);
            Assert.Equal(8080, (int)portmap["runtimeConfig"]!["portMappings"]![0]!["hostPort"]!);
            Assert.Null(plugins.Calls.Single(c => c.Plugin == "loopback" && c.Command == command).Stdin["runtimeConfig"]);
        }
    }

    [Fact]
    public async Task Without_the_annotation_no_plugin_gets_ips()
    {
        var plugins = new RecordingPlugins();

        await Network(plugins, ipsCapability: true).AddAsync("s1", _dir.Combine("netns"), Pod(null), Ct);

        Assert.All(plugins.Calls, c => Assert.Null(c.Stdin["runtimeConfig"]));
    }

    [Fact]
    public async Task A_network_without_the_ips_capability_is_refused_before_any_plugin_runs()
    {
        var plugins = new RecordingPlugins();

        var e = await Assert.ThrowsAsync<CrestException>(() => Network(plugins, ipsCapability: false).AddAsync("s1", _dir.Combine("netns"), Pod("10.124.0.9"), Ct));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains("10.124.0.9", e.Message, StringComparison.Ordinal);
        Assert.Contains("\"capabilities\": {\"ips\": true}", e.Message, StringComparison.Ordinal);
        Assert.Empty(plugins.Calls);
    }

    [Theory]
    [InlineData("10.124.0")]
    [InlineData("10.124.0.9/33")]
    [InlineData("pod-a")]
    public async Task A_malformed_address_is_refused(string ips)
    {
        var plugins = new RecordingPlugins();

        var e = await Assert.ThrowsAsync<CrestException>(() => Network(plugins, ipsCapability: true).AddAsync("s1", _dir.Combine("netns"), Pod(ips), Ct));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Contains(PodAnnotations.NetworkIps, e.Message, StringComparison.Ordinal);
        Assert.Empty(plugins.Calls);
    }

    public void Dispose() => _dir.Dispose();
}
