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
    /// <summary>
    /// The test collection of every class that starts two nodes: their bridges and subnets are fixed, and tests count the
    /// workload's processes machine-wide, so such classes run one after the other.
    /// </summary>
    public const string Collection = "two crestd nodes";

    private TwoNodes(LocalRegistry registry, Node a, Node b)
    {
        Registry = registry;
        A = a;
        B = b;
    }

    /// <summary>One node: its temp dir, crestd, the global flags that point crest at it, and the pods it owns.</summary>
    internal sealed record Node(TempDir Dir, CrestdProcess Crestd, string Bridge) : IAsyncDisposable
    {
        /// <summary>The crestd now serving the node (another process after <see cref="RestartAsync"/>, on the same socket).</summary>
        public CrestdProcess Crestd { get; private set; } = Crestd;

        /// <summary>crestd's arguments, for a restart on the same roots (null: this node cannot be restarted).</summary>
        public string[]? StartArguments { get; init; }

        public string[] R => ["-r", Crestd.Endpoint];

        /// <summary>Waits (bounded) for crestd to die at its armed crash point and returns its exit code (137 for SIGKILL).</summary>
        public async Task<int> WaitForCrashAsync(TimeSpan timeout)
        {
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
            cts.CancelAfter(timeout);
            await Crestd.Process.WaitForExitAsync(cts.Token);
            return Crestd.Process.ExitCode;
        }

        /// <summary>kill -9 of crestd now; what it started (conmon, runc, CRIU) lives on.</summary>
        public async Task KillAsync()
        {
            Crestd.Process.Kill();
            await Crestd.Process.WaitForExitAsync(TestContext.Current.CancellationToken);
        }

        /// <summary>Starts crestd again on the same roots, config and socket, with no crash point armed, and waits until it answers.</summary>
        public async Task RestartAsync()
        {
            var args = StartArguments ?? throw new InvalidOperationException($"node {Dir.Path} was not started by TwoNodes and cannot be restarted");
            var previous = Crestd;
            await previous.DisposeAsync();
            var crestd = CrestdProcess.Start(args);
            Crestd = crestd;
            await UnixGrpc.WaitForCriAsync(crestd.Socket, TimeSpan.FromSeconds(30), () => previous.Log + "\n--- restarted ---\n" + crestd.Log);
        }

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

    /// <summary>
    /// Starts the registry and both nodes (A: bridge crmiga, 10.125.0.0/16; B: crmigb, 10.126.0.0/16), each crestd with
    /// <paramref name="environmentA"/> or <paramref name="environmentB"/> in its environment (a crash point to arm).
    /// </summary>
    public static async Task<TwoNodes> StartAsync(string name, IDictionary<string, string>? environmentA = null, IDictionary<string, string>? environmentB = null)
    {
        Requires.Root();
        Requires.Binary("docker-registry");
        var registry = await LocalRegistry.StartAsync();
        Node? a = null;
        try
        {
            a = await StartNodeAsync(name + "-a", "crmiga", "10.125.0.0/16", environmentA);
            var b = await StartNodeAsync(name + "-b", "crmigb", "10.126.0.0/16", environmentB);
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

    private static async Task<Node> StartNodeAsync(string name, string bridge, string subnet, IDictionary<string, string>? environment)
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
            string[] args = ["--config", config, "--root", dir.Combine("root"), "--state", dir.Combine("state")];
            var crestd = CrestdProcess.Start(environment, args);
            try
            {
                await UnixGrpc.WaitForCriAsync(crestd.Socket, TimeSpan.FromSeconds(30), () => crestd.Log);
            }
            catch
            {
                await crestd.DisposeAsync();
                throw;
            }

            return new Node(dir, crestd, bridge) { StartArguments = args };
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
