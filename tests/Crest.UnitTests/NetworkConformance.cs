using System.Text.Json.Nodes;
using Crest.Core;
using Crest.Runtime;
using Crest.TestKit;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>
/// The checks every <see cref="INetwork"/> passes: CNI (a real conflist and plugin lookup, with the plugins played by
/// <see cref="ScriptedCniPlugins"/>) and the fake.
/// </summary>
public abstract class NetworkConformance : IDisposable
{
    protected TempDir Dir { get; } = new();

    protected abstract INetwork Create();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static readonly PodSpec Pod = new() { Name = "web", Uid = "u1", Namespace = "default" };

    [Fact]
    public async Task Add_gives_the_pod_an_address_and_a_result_to_replay_at_del()
    {
        var network = Create();

        var attachment = await network.AddAsync("s1", Dir.Combine("netns"), Pod, Ct);

        var ip = Assert.Single(attachment.Ips);
        Assert.True(System.Net.IPAddress.TryParse(ip, out _), ip);
        Assert.NotNull(JsonNode.Parse(attachment.Result));
        Assert.NotEmpty(attachment.Config);
    }

    [Fact]
    public async Task Del_after_add_succeeds_and_a_second_del_does_too()
    {
        var network = Create();
        var attachment = await network.AddAsync("s1", Dir.Combine("netns"), Pod, Ct);

        await network.DelAsync("s1", Dir.Combine("netns"), Pod, attachment.Result, attachment.Config, Ct);
        await network.DelAsync("s1", Dir.Combine("netns"), Pod, attachment.Result, attachment.Config, Ct);
    }

    public void Dispose()
    {
        Dir.Dispose();
        GC.SuppressFinalize(this);
    }
}

public sealed class CniNetworkTests : NetworkConformance
{
    protected override INetwork Create()
    {
        var plugins = Dir.CreateDirectory("bin");
        foreach (var p in new[] { "bridge", "portmap", "loopback" })
        {
            File.WriteAllText(Path.Combine(plugins, p), "");
        }

        CniFixture.WriteBridgeConflist(Dir.CreateDirectory("net.d"));
        return new CniNetwork(new CniOptions(Dir.Combine("net.d"), [plugins]), new ScriptedCniPlugins());
    }
}

public sealed class FakeNetworkTests : NetworkConformance
{
    protected override INetwork Create() => new FakeNetwork();
}

/// <summary>CNI plugins as the spec has them answer: bridge allocates an address on ADD, the others pass the previous result on.</summary>
internal sealed class ScriptedCniPlugins : ICommandRunner
{
    public Task<CommandResult> RunAsync(CommandLine command, CancellationToken ct)
    {
        var add = command.Environment!["CNI_COMMAND"] == "ADD";
        var stdout = add && Path.GetFileName(command.Program) == "bridge"
            ? """{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.124.0.7/16","interface":0}]}"""
            : "";
        return Task.FromResult(new CommandResult(0, stdout, ""));
    }
}
