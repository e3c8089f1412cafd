using Crest.TestKit;

namespace Crest.E2ETests;

/// <summary>
/// Two crestd "nodes" on this machine, as live migration tests and the demo need them: each with its own roots, socket,
/// streaming port (0: a free one) and CNI network (its own bridge and subnet), restore through CreateContainer on
/// (a migration's target restores that way), sharing one loopback registry that both
/// pull from. Disposed in reverse: each node's pods, then the daemons, then the registry, whatever failed.
/// </summary>
internal sealed class TwoNodes : IAsyncDisposable
{
    private TwoNodes(LocalRegistry registry, Node a, Node b)
    {
        Registry = registry;
        A = a;
        B = b;
    }

    /// <summary>One node: its temp dir, crestd, the global flags that point crest at it, and the pods it owns.</summary>
    internal sealed record Node(TempDir Dir, CrestdProcess Crestd, string Bridge) : IAsyncDisposable
    {
        public string[] R => ["-r", Crestd.Endpoint];

        public OwnedPods Pods { get; } = new("-r", Crestd.Endpoint);

        public async ValueTask DisposeAsync()
        {
            try
            {
                await Pods.DisposeAsync();
            }
            finally
            {
                await Crestd.DisposeAsync();
                Dir.Dispose();
            }
        }
    }

    public LocalRegistry Registry { get; }

    public Node A { get; }

    public Node B { get; }

    /// <summary>Starts the registry and both nodes (A: bridge crmiga, 10.125.0.0/16; B: crmigb, 10.126.0.0/16).</summary>
    public static async Task<TwoNodes> StartAsync(string name)
    {
        Requires.Root();
        Requires.Binary("docker-registry");
        var registry = await LocalRegistry.StartAsync();
        Node? a = null;
        try
        {
            a = await StartNodeAsync(name + "-a", "crmiga", "10.125.0.0/16");
            var b = await StartNodeAsync(name + "-b", "crmigb", "10.126.0.0/16");
            return new TwoNodes(registry, a, b);
        }
        catch
        {
            if (a is not null)
            {
                await a.DisposeAsync();
            }

            await registry.DisposeAsync();
            throw;
        }
    }

    private static async Task<Node> StartNodeAsync(string name, string bridge, string subnet)
    {
        var dir = new TempDir("crest-e2e-" + name);
        try
        {
            var cni = dir.CreateDirectory("cni");
            CniFixture.WriteBridgeConflist(cni, "crest-" + name, bridge, subnet);
            var config = dir.Combine("config.toml");
            await File.WriteAllTextAsync(config, $"""
                [cni]
                conf_dir = "{cni}"
                plugin_dirs = ["{CniFixture.HostPluginDir}"]
                [restore]
                via_create = true
                """);
            var crestd = CrestdProcess.Start("--config", config, "--root", dir.Combine("root"), "--state", dir.Combine("state"));
            try
            {
                await UnixGrpc.WaitForCriAsync(crestd.Socket, TimeSpan.FromSeconds(30), () => crestd.Log);
            }
            catch
            {
                await crestd.DisposeAsync();
                throw;
            }

            return new Node(dir, crestd, bridge);
        }
        catch
        {
            dir.Dispose();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await B.DisposeAsync();
        }
        finally
        {
            try
            {
                await A.DisposeAsync();
            }
            finally
            {
                await Registry.DisposeAsync();
                // The bridges CNI made for the two networks are this helper's; nothing else uses them.
                foreach (var bridge in new[] { A.Bridge, B.Bridge })
                {
                    await CheckpointSteps.Tool("ip", "link", "delete", bridge);
                }
            }
        }
    }
}
