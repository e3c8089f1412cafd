using System.ComponentModel;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Crest.TestKit;

namespace Crest.E2ETests;

/// <summary>
/// Two crestd nodes whose pod networks could be two machines on a routed network, built from network namespaces that
/// this helper makes and removes: each node's crestd runs in a namespace of its own (<c>nodeA</c>, <c>nodeB</c>), where
/// CNI makes the same bridge with the same pod subnet (<see cref="PodSubnet"/>, and the ips capability on), so one pod
/// address can live on either node. A client namespace is linked to both (a veth pair each) and holds
/// <see cref="ClientAddress"/>; both nodes route it back over their link, and the client routes a pod address to
/// whichever node holds it (<see cref="RoutePodAsync"/>): the switch a routed pod network makes when a pod moves.
/// <code>
///   client 172.31.0.1 ── ca 172.31.1.2 ═══ ac 172.31.1.1  nodeA: crestd A, bridge crtcp0 10.131.0.1/16, pods
///                    └── cb 172.31.2.2 ═══ bc 172.31.2.1  nodeB: crestd B, bridge crtcp0 10.131.0.1/16, pods
/// </code>
/// Disposed in reverse, each step whatever the one before did: each node's pods, its crestd and files, then the three
/// namespaces (with them every veth, bridge and route inside).
/// </summary>
internal sealed class TcpMigrationTopology : IAsyncDisposable
{
    public const string PodSubnet = "10.131.0.0/16";

    public const string ClientAddress = "172.31.0.1";

    private readonly List<string> _namespaces = [];

    private readonly List<TwoNodes.Node> _nodes = [];

    private TcpMigrationTopology(string prefix)
    {
        Prefix = prefix;
    }

    /// <summary>Unique to this topology (namespace names begin with it); pods name their UIDs after it.</summary>
    public string Prefix { get; }

    public TwoNodes.Node A => _nodes[0];

    public TwoNodes.Node B => _nodes[1];

    public string ClientNetns => "/run/netns/" + Prefix + "-c";

    /// <summary>The client's gateway towards a node: its end of that node's veth pair.</summary>
    private static string GatewayOf(int node) => node == 0 ? "172.31.1.1" : "172.31.2.1";

    /// <summary>
    /// Builds the namespaces and links, then starts both nodes. Node A hands pod addresses out from 10.131.0.50 and
    /// node B from 10.131.0.2, so an address B gives without being asked differs from A's. Without
    /// <paramref name="ipsOnB"/> node B's network does not declare the ips capability.
    /// </summary>
    public static async Task<TcpMigrationTopology> StartAsync(bool ipsOnB = true)
    {
        Requires.Root();
        Requires.Binary("ip");
        Requires.Binary("nsenter");
        Requires.Binary("iptables");
        var topology = new TcpMigrationTopology("crtcp" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(3)));
        try
        {
            await topology.BuildNetworkAsync();
            topology._nodes.Add(await StartNodeAsync(topology.Prefix + "-a", "10.131.0.50", ips: true));
            topology._nodes.Add(await StartNodeAsync(topology.Prefix + "-b", null, ipsOnB));
            return topology;
        }
        catch
        {
            await topology.DisposeAsync();
            throw;
        }
    }

    private async Task BuildNetworkAsync()
    {
        string a = Prefix + "-a", b = Prefix + "-b", c = Prefix + "-c";
        foreach (var ns in new[] { a, b, c })
        {
            await IpAsync("netns", "add", ns);
            _namespaces.Add(ns);
            await IpAsync("-n", ns, "link", "set", "lo", "up");
            // Forwarding on; no reverse-path filter: the client gets the target's first segments while its route still points at the source.
            await ToolAsync("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0");
        }

        await IpAsync("link", "add", "ca", "netns", c, "type", "veth", "peer", "name", "ac", "netns", a);
        await IpAsync("link", "add", "cb", "netns", c, "type", "veth", "peer", "name", "bc", "netns", b);
        await IpAsync("-n", c, "addr", "add", ClientAddress + "/32", "dev", "lo");
        foreach (var (node, clientEnd, nodeEnd, net) in new[] { (a, "ca", "ac", "172.31.1"), (b, "cb", "bc", "172.31.2") })
        {
            await IpAsync("-n", c, "addr", "add", net + ".2/24", "dev", clientEnd);
            await IpAsync("-n", c, "link", "set", clientEnd, "up");
            await IpAsync("-n", node, "addr", "add", net + ".1/24", "dev", nodeEnd);
            await IpAsync("-n", node, "link", "set", nodeEnd, "up");
            await IpAsync("-n", node, "route", "add", ClientAddress + "/32", "via", net + ".2");
        }

        // The nodes reach each other through the client's namespace, as two machines of a routed network do: a
        // post-copy target fetches the memory from the source's page server on the source's address.
        await IpAsync("-n", a, "route", "add", "172.31.2.0/24", "via", "172.31.1.2");
        await IpAsync("-n", b, "route", "add", "172.31.1.0/24", "via", "172.31.2.2");
    }

    /// <summary>A node's own address on its link (<see cref="A"/>: 0, <see cref="B"/>: 1), which the other node reaches.</summary>
    public static string NodeAddress(int node) => GatewayOf(node);

    private static async Task<TwoNodes.Node> StartNodeAsync(string name, string? rangeStart, bool ips)
    {
        var dir = new TempDir("crest-e2e-" + name);
        try
        {
            var cni = dir.CreateDirectory("cni");
            var start = rangeStart is null ? "" : $", \"rangeStart\": \"{rangeStart}\"";
            // No masquerading: the client must see the pod's own address on both nodes. A default route in the pod (via the
            // bridge) to answer the client outside the pod subnet. The IPAM state is the node's own.
            await File.WriteAllTextAsync(Path.Combine(cni, "10-" + name + ".conflist"), $$"""
                {
                  "cniVersion": "1.0.0",
                  "name": "crest-{{name}}",
                  "plugins": [
                    { "type": "bridge", "bridge": "crtcp0", "isGateway": true, "ipMasq": false, "capabilities": { "ips": {{(ips ? "true" : "false")}} },
                      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "{{PodSubnet}}"{{start}} }]], "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "{{dir.CreateDirectory("ipam")}}" } },
                    { "type": "loopback" }
                  ]
                }
                """);
            var config = dir.Combine("config.toml");
            await File.WriteAllTextAsync(config, $"""
                [cni]
                conf_dir = "{cni}"
                plugin_dirs = ["{CniFixture.HostPluginDir}"]
                [restore]
                via_create = true
                """);
            var crestd = CrestdProcess.StartInNetns("/run/netns/" + name, "--config", config, "--root", dir.Combine("root"), "--state", dir.Combine("state"));
            try
            {
                await UnixGrpc.WaitForCriAsync(crestd.Socket, TimeSpan.FromSeconds(30), () => crestd.Log);
            }
            catch
            {
                await crestd.DisposeAsync();
                throw;
            }

            return new TwoNodes.Node(dir, crestd, "crtcp0");
        }
        catch
        {
            dir.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The same busybox image on both nodes, loaded from one OCI layout archive (the same image ID on both: the
    /// nodes' namespaces do not reach the host's loopback registry).
    /// </summary>
    public async Task<string> LoadBusyboxAsync()
    {
        const string image = "localhost/e2e/busybox:tcp";
        var layout = A.Dir.CreateDirectory("busybox-layout");
        TestImages.WriteLayout(layout, [new TestLayer(LayerCompression.Gzip, t => TestImages.BusyboxRootfs(t))], "tcp");
        var archive = A.Dir.Combine("busybox-layout.tar");
        TestImages.TarDirectory(layout, archive);
        foreach (var node in _nodes)
        {
            await CheckpointSteps.RunAsync([.. node.R, "image", "load", archive, "localhost/e2e/busybox"]);
        }

        return image;
    }

    /// <summary>The client's route to <paramref name="podIp"/> goes to node A (0) or B (1).</summary>
    public Task RoutePodAsync(string podIp, int node) =>
        IpAsync("-n", Prefix + "-c", "route", "replace", podIp + "/32", "via", GatewayOf(node), "src", ClientAddress);

    /// <summary>A TCP socket made in the client's namespace (a socket keeps the namespace it was made in).</summary>
    public Socket ClientSocket()
    {
        Socket? socket = null;
        Exception? failure = null;
        // A thread of its own enters the namespace and ends: no pooled thread ever changes namespace.
        var thread = new Thread(() =>
        {
            try
            {
                using var ns = File.OpenHandle(ClientNetns);
                if (SetNs(ns.DangerousGetHandle().ToInt32(), CloneNewNet) != 0)
                {
                    throw new Win32Exception(Marshal.GetLastPInvokeError(), $"setns({ClientNetns})");
                }

                socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        thread.Join();
        return failure is null ? socket! : throw new InvalidOperationException("could not make a socket in the client namespace", failure);
    }

    /// <summary>A connection from the client to <paramref name="podIp"/>:<paramref name="port"/> once something listens there.</summary>
    public async Task<Socket> ConnectAsync(string podIp, int port, CancellationToken ct)
    {
        Socket? connected = null;
        await Eventually.UntilAsync(async () =>
        {
            var socket = ClientSocket();
            try
            {
                using var attempt = CancellationTokenSource.CreateLinkedTokenSource(ct);
                attempt.CancelAfter(TimeSpan.FromSeconds(2));
                await socket.ConnectAsync(new IPEndPoint(IPAddress.Parse(podIp), port), attempt.Token);
                connected = socket;
                return true;
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException && !ct.IsCancellationRequested)
            {
                socket.Dispose();
                return false;
            }
        }, $"a TCP connection from the client namespace to {podIp}:{port}", TimeSpan.FromSeconds(30), ct).ConfigureAwait(false);
        return connected!;
    }

    /// <summary>Addresses, routes and filter rules of the three namespaces, for a failure message.</summary>
    public async Task<string> DescribeAsync()
    {
        var text = new System.Text.StringBuilder();
        foreach (var ns in _namespaces)
        {
            foreach (var args in new[] { new[] { "-n", ns, "-br", "addr" }, ["-n", ns, "route"] })
            {
                text.AppendLine($"ip {string.Join(' ', args)}:").AppendLine((await CheckpointSteps.Tool("ip", args)).Output.Trim());
            }

            text.AppendLine($"iptables -S in {ns}:").AppendLine((await CheckpointSteps.Tool("ip", "netns", "exec", ns, "iptables", "-S")).Output.Trim());
        }

        return text.ToString();
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            foreach (var node in Enumerable.Reverse(_nodes))
            {
                try
                {
                    await node.DisposeAsync();
                }
                catch (Exception e)
                {
                    LeakCheck($"node {node.Crestd.Endpoint} did not stop cleanly: {e.Message}");
                }
            }
        }
        finally
        {
            // A namespace goes once its last process has; deleting the name removes the mount either way.
            foreach (var ns in Enumerable.Reverse(_namespaces))
            {
                var (code, output) = await CheckpointSteps.Tool("ip", "netns", "delete", ns);
                if (code != 0)
                {
                    LeakCheck($"ip netns delete {ns} failed: {output.Trim()}");
                }
            }
        }
    }

    private static void LeakCheck(string message) => Crest.Tests.LeakCheckAttribute.Report(message);

    private static Task IpAsync(params string[] args) => ToolAsync("ip", args);

    private static async Task ToolAsync(string program, params string[] args)
    {
        var (code, output) = await CheckpointSteps.Tool(program, args);
        if (code != 0)
        {
            throw new InvalidOperationException($"{program} {string.Join(' ', args)} failed ({code}): {output.Trim()}");
        }
    }

    private const int CloneNewNet = 0x40000000;

    [DllImport("libc", EntryPoint = "setns", SetLastError = true)]
    private static extern int SetNs(int fd, int nstype);
}
