using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

/// <summary>
/// <c>crest migrate --keep-address</c> between two nodes whose pod networks are separate namespaces with the same pod
/// subnet (<see cref="TcpMigrationTopology"/>): a client outside both keeps one TCP connection to a server in the
/// container through the migration and the route switch, and the same connection goes on being answered by the same
/// process, with no reset; a migration that fails leaves the connection with the source, answered as before.
/// </summary>
public sealed class TcpMigrationTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private const int Port = 7000;

    /// <summary>
    /// busybox nc accepts one connection and runs a shell loop on it: each line read is answered "N LINE", N counted
    /// in the shell's memory, and "served N" goes to the CRI log.
    /// </summary>
    private const string Server = "n=0; while read l; do n=$((n+1)); echo \"$n $l\"; echo \"served $n\" >&2; done";

    private static void RequireTools()
    {
        Requires.Root();
        Requires.Binary("conmon");
        Requires.Binary("criu");
        Requires.Binary("runc");
    }

    /// <summary>The server running on node A in a pod of its own, and a client connection to it routed through node A.</summary>
    private static async Task<(string Id, string PodIp, Socket Socket)> ServeOnAAsync(TcpMigrationTopology topology)
    {
        var a = topology.A;
        var image = await topology.LoadBusyboxAsync();
        var podA = await WritePodAsync(a.Dir, "tcp", $"uid-{topology.Prefix}-a");
        var podAId = await a.Pods.RunAsync(podA);
        var podIp = await PodIpAsync(a.R, podAId);
        Assert.StartsWith("10.131.0.", podIp, StringComparison.Ordinal);
        var config = a.Dir.Combine("server.json");
        await File.WriteAllTextAsync(config, $$"""
            {"metadata": {"name": "server"}, "image": {"image": "{{image}}"},
             "command": ["/bin/busybox", "nc", "-l", "-p", "{{Port}}", "-e", "/bin/sh", "-c", {{JsonSerializer.Serialize(Server)}}], "log_path": "server.log"}
            """, Ct);
        var id = await RunAsync([.. a.R, "create", podAId, config, podA]);
        await RunAsync([.. a.R, "start", id]);
        await topology.RoutePodAsync(podIp, node: 0);
        try
        {
            return (id, podIp, await topology.ConnectAsync(podIp, Port, Ct));
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            Assert.Fail($"{e.Message}\ncontainer {id}: {await StateAsync(a.R, id)}, log: {await ReadLogAsync(a.Dir.Combine("logs-tcp", "server.log"))}\n{await topology.DescribeAsync()}");
            throw;
        }
    }

    /// <summary>
    /// Sends "ping N" every 0.1 s over one connection and awaits each answer (for up to a minute: segments lost to a
    /// switch are retransmitted); an answer out of order, a reset or a close ends it with the reason.
    /// </summary>
    private sealed class LineClient : IAsyncDisposable
    {
        private readonly Socket _socket;
        private readonly NetworkStream _stream;
        private readonly StreamReader _reader;
        private readonly CancellationTokenSource _stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);

        public LineClient(Socket socket)
        {
            _socket = socket;
            _stream = new NetworkStream(socket, ownsSocket: false);
            _reader = new StreamReader(_stream, Encoding.ASCII);
            Exchange = Task.Run(RunAsync, CancellationToken.None);
        }

        /// <summary>The exchange: ends only when the test ends it, or with what broke it.</summary>
        public Task Exchange { get; }

        public ConcurrentQueue<int> Replies { get; } = new();

        public ConcurrentQueue<DateTimeOffset> AnsweredAt { get; } = new();

        public string Failure => $"{Exchange.Exception?.InnerException?.GetType().Name}: {Exchange.Exception?.InnerException?.Message}";

        /// <summary>The longest wait between two answers.</summary>
        public TimeSpan LongestWait()
        {
            var times = AnsweredAt.ToArray();
            return times.Zip(times.Skip(1), (x, y) => y - x).DefaultIfEmpty().Max();
        }

        public Task AnswersAsync(int count, string what) =>
            Eventually.UntilAsync(() => Exchange.IsCompleted || Replies.Count >= count, what, TimeSpan.FromMinutes(2), Ct);

        private async Task RunAsync()
        {
            try
            {
                for (var i = 1; !_stop.IsCancellationRequested; i++)
                {
                    await _stream.WriteAsync(Encoding.ASCII.GetBytes($"ping {i}\n"), Ct);
                    using var wait = CancellationTokenSource.CreateLinkedTokenSource(Ct);
                    wait.CancelAfter(TimeSpan.FromMinutes(1));
                    var line = await _reader.ReadLineAsync(wait.Token) ?? throw new IOException($"the server closed the connection after {i - 1} answers");
                    Assert.Equal($"{i} ping {i}", line);
                    Replies.Enqueue(i);
                    AnsweredAt.Enqueue(DateTimeOffset.UtcNow);
                    await Task.Delay(TimeSpan.FromMilliseconds(100), _stop.Token);
                }
            }
            catch (Exception) when (_stop.IsCancellationRequested)
            {
                // The test ended the exchange (and shut the socket down under a pending read).
            }
        }

        /// <summary>Ends the exchange; rethrows what ended it earlier, if anything did.</summary>
        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            try
            {
                _socket.Shutdown(SocketShutdown.Both);
            }
            catch (SocketException)
            {
                // Already broken: the task says how.
            }

            try
            {
                await Task.WhenAny(Exchange, Task.Delay(TimeSpan.FromSeconds(5), CancellationToken.None));
            }
            finally
            {
                _reader.Dispose();
                await _stream.DisposeAsync();
                _socket.Dispose();
                _stop.Dispose();
            }
        }
    }

    [Fact]
    public async Task An_established_connection_survives_a_migration_that_keeps_the_pod_address_and_gets_answers_after_the_route_switch()
    {
        RequireTools();
        await using var topology = await TcpMigrationTopology.StartAsync();
        var (a, b) = (topology.A, topology.B);
        var (id, podIp, socket) = await ServeOnAAsync(topology);
        await OnOneConnectionAsync(socket, async client =>
        {
            await client.AnswersAsync(5, "the client's first five answers from node A");
            var podB = await WritePodAsync(b.Dir, "tcp", $"uid-{topology.Prefix}-b");

            var (migrated, atSwitch) = await MigrateAcrossTheRouteSwitchAsync(topology, client, podIp, 1,
                [.. a.R, "migrate", id, "--to", b.Crestd.Endpoint, "--pod-config", podB, "--keep-address", "-o", "json"]);

            Assert.True(migrated.ExitCode == 0, $"migrate failed ({migrated.ExitCode}): {migrated.Stderr}\nA: {a.Crestd.Log}\nB: {b.Crestd.Log}");
            Assert.False(client.Exchange.IsCompleted, $"the client stopped during the migration: {client.Failure}");
            using var report = JsonDocument.Parse(migrated.Stdout);
            var newId = report.RootElement.GetProperty("containerId").GetString()!;
            var podBId = report.RootElement.GetProperty("podSandboxId").GetString()!;
            // The target pod has the source pod's address (node B alone would have given 10.131.0.2), the source pod is gone.
            Assert.Equal(podIp, await PodIpAsync(b.R, podBId));
            Assert.Equal("", await RunAsync([.. a.R, "pods", "-q"]));
            Assert.Equal("CONTAINER_RUNNING", await StateAsync(b.R, newId));

            await AnswersFromBAfterTheSwitchAsync(client, atSwitch, b);
            // What the client saw: the longest wait for an answer, across the freeze, the restore and the route switch.
            TestContext.Current.SendDiagnosticMessage(
                $"TCP migration: {client.Replies.Count} answers on one connection, {atSwitch} before the route switch; longest wait for an answer {client.LongestWait().TotalMilliseconds:0} ms; "
                + $"frozen {report.RootElement.GetProperty("frozenMs")} ms, downtime {report.RootElement.GetProperty("downtimeMs")} ms\n{migrated.Stderr}");
        });
    }

    [Fact]
    public async Task A_migration_that_fails_on_the_target_unlocks_the_source_and_the_connection_goes_on_there()
    {
        RequireTools();
        await using var topology = await TcpMigrationTopology.StartAsync();
        var (a, b) = (topology.A, topology.B);
        var (id, _, socket) = await ServeOnAAsync(topology);
        await OnOneConnectionAsync(socket, async client =>
        {
            var migrated = await MigrateFailingOnTheTargetAsync(topology, client, "the client's first five answers from node A",
                podB => [.. a.R, "migrate", id, "--to", b.Crestd.Endpoint, "--pod-config", podB, "--keep-address"], "undone: the container runs on");
            Assert.Equal("CONTAINER_RUNNING", await StateAsync(a.R, id));
            TestContext.Current.SendDiagnosticMessage($"failed TCP migration: longest wait for an answer {client.LongestWait().TotalMilliseconds:0} ms\n{migrated.Stderr}");
        });
    }

    [Fact]
    public async Task Keeping_the_address_on_a_network_without_the_ips_capability_is_refused_and_the_source_runs_on()
    {
        RequireTools();
        await using var topology = await TcpMigrationTopology.StartAsync(ipsOnB: false);
        var (a, b) = (topology.A, topology.B);
        var (id, _, socket) = await ServeOnAAsync(topology);
        var client = new LineClient(socket);
        try
        {
            await client.AnswersAsync(3, "the client's first answers from node A");
            var podB = await WritePodAsync(b.Dir, "tcp", $"uid-{topology.Prefix}-b");

            var migrated = await Binaries.RunCrestAsync([.. a.R, "migrate", id, "--to", b.Crestd.Endpoint, "--pod-config", podB, "--keep-address"]);

            TestContext.Current.TestOutputHelper?.WriteLine(migrated.Stderr);
            Assert.Equal(1, migrated.ExitCode);
            Assert.Contains("declares the ips capability", migrated.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("freeze:", migrated.Stderr, StringComparison.Ordinal);
            Assert.Equal("CONTAINER_RUNNING", await StateAsync(a.R, id));
            Assert.Equal("", await RunAsync([.. b.R, "pods", "-q"]));
            var before = client.Replies.Count;
            await client.AnswersAsync(before + 3, "more answers from node A after the refusal");
            Assert.False(client.Exchange.IsCompleted, $"the connection broke: {client.Failure}");
        }
        finally
        {
            await client.DisposeAsync();
        }

        await client.Exchange;
    }

    /// <summary>
    /// A pod on node A running the server and a counter beside it (each in a pid namespace of its own, as the kubelet asks),
    /// and a client connection to the server routed through node A.
    /// </summary>
    private static async Task<(string PodId, string PodIp, Socket Socket)> ServePodOnAAsync(TcpMigrationTopology topology)
    {
        var a = topology.A;
        var image = await topology.LoadBusyboxAsync();
        var podA = await WritePodAsync(a.Dir, "tcp", $"uid-{topology.Prefix}-a");
        var podAId = await a.Pods.RunAsync(podA);
        var podIp = await PodIpAsync(a.R, podAId);
        const string Private = """{"security_context": {"namespace_options": {"pid": "CONTAINER"} } }""";
        foreach (var (name, command) in new[]
        {
            ("server", $$"""["/bin/busybox", "nc", "-l", "-p", "{{Port}}", "-e", "/bin/sh", "-c", {{JsonSerializer.Serialize(Server)}}]"""),
            ("counter", $$"""["/bin/busybox", "sh", "-c", {{JsonSerializer.Serialize(CounterWorkload.Script)}}]"""),
        })
        {
            var config = a.Dir.Combine(name + ".json");
            await File.WriteAllTextAsync(config, $$"""
                {"metadata": {"name": "{{name}}"}, "image": {"image": "{{image}}"}, "command": {{command}}, "log_path": "{{name}}.log", "linux": {{Private}} }
                """, Ct);
            var id = await RunAsync([.. a.R, "create", podAId, config, podA]);
            await RunAsync([.. a.R, "start", id]);
        }

        await topology.RoutePodAsync(podIp, node: 0);
        try
        {
            return (podAId, podIp, await topology.ConnectAsync(podIp, Port, Ct));
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            Assert.Fail($"{e.Message}\nserver log: {await ReadLogAsync(a.Dir.Combine("logs-tcp", "server.log"))}\n{await topology.DescribeAsync()}");
            throw;
        }
    }

    /// <remarks>
    /// Post-copy too: the connections are in the pod checkpoint, and each container's memory comes from its page server
    /// on node A's address, which node B reaches over the routed network.
    /// </remarks>
    [Theory]
    [InlineData("stop-copy")]
    [InlineData("post-copy")]
    public async Task A_whole_pod_that_keeps_its_address_takes_its_established_connection_along(string strategy)
    {
        RequireTools();
        await using var topology = await TcpMigrationTopology.StartAsync();
        var (a, b) = (topology.A, topology.B);
        if (strategy == "post-copy")
        {
            using var info = JsonDocument.Parse(await RunAsync([.. a.R, "info", "-o", "json"]));
            var postCopy = info.RootElement.GetProperty("liveMigration").EnumerateArray().Single(s => s.GetProperty("strategy").GetString() == "post-copy");
            Assert.SkipUnless(postCopy.GetProperty("supported").GetBoolean(), "post-copy is not available on this node: " + postCopy.GetProperty("reason").GetString());
        }

        var (podAId, podIp, socket) = await ServePodOnAAsync(topology);
        await OnOneConnectionAsync(socket, async client =>
        {
            await client.AnswersAsync(5, "the client's first five answers from the pod on node A");
            var podB = await WritePodAsync(b.Dir, "tcp", $"uid-{topology.Prefix}-b");

            var (migrated, atSwitch) = await MigrateAcrossTheRouteSwitchAsync(topology, client, podIp, 2,
                [.. a.R, "migrate", "pod", podAId, "--to", b.Crestd.Endpoint, "--pod-config", podB, "--keep-address", "--strategy", strategy, "-o", "json",
                    .. strategy == "post-copy" ? ["--page-server-address", TcpMigrationTopology.NodeAddress(0)] : Array.Empty<string>()]);

            Assert.True(migrated.ExitCode == 0, $"migrate pod failed ({migrated.ExitCode}): {migrated.Stderr}\nA: {a.Crestd.Log}\nB: {b.Crestd.Log}");

            Assert.False(client.Exchange.IsCompleted, $"the client stopped during the migration: {client.Failure}");
            using var report = JsonDocument.Parse(migrated.Stdout);
            Assert.Equal(strategy, report.RootElement.GetProperty("strategy").GetString());
            var podBId = report.RootElement.GetProperty("podSandboxId").GetString()!;
            // The restored pod has the source pod's address, and the source pod is gone.
            Assert.Equal(podIp, await PodIpAsync(b.R, podBId));
            Assert.Equal("", await RunAsync([.. a.R, "pods", "-q"]));

            await AnswersFromBAfterTheSwitchAsync(client, atSwitch, b);
            // The counter beside it moved too and counts on.
            await CountPassesAsync(b.Dir.Combine("logs-tcp", "counter.log"), LastCount(await ReadLogAsync(a.Dir.Combine("logs-tcp", "counter.log"))) + 3,
                "the counter does not count on B: " + b.Crestd.Log);
            TestContext.Current.SendDiagnosticMessage(
                $"TCP pod migration ({strategy}): {client.Replies.Count} answers on one connection, {atSwitch} before the route switch; longest wait for an answer {client.LongestWait().TotalMilliseconds:0} ms; "
                + $"frozen {report.RootElement.GetProperty("frozenMs")} ms, downtime {report.RootElement.GetProperty("downtimeMs")} ms\n{migrated.Stderr}");
        });
    }

    [Fact]
    public async Task A_whole_pod_migration_that_fails_on_the_target_unlocks_the_source_pod_and_the_connection_goes_on_there()
    {
        RequireTools();
        await using var topology = await TcpMigrationTopology.StartAsync();
        var (a, b) = (topology.A, topology.B);
        var (podAId, _, socket) = await ServePodOnAAsync(topology);
        await OnOneConnectionAsync(socket, async client =>
        {
            var migrated = await MigrateFailingOnTheTargetAsync(topology, client, "the client's first five answers from the pod on node A",
                podB => [.. a.R, "migrate", "pod", podAId, "--to", b.Crestd.Endpoint, "--pod-config", podB, "--keep-address"], "undone: the pod runs on");
            Assert.Equal(podAId, await RunAsync([.. a.R, "pods", "-q"]));
            Assert.Equal(2, (await RunAsync([.. a.R, "ps", "-q"])).Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
            TestContext.Current.SendDiagnosticMessage($"failed TCP pod migration: longest wait for an answer {client.LongestWait().TotalMilliseconds:0} ms\n{migrated.Stderr}");
        });
    }

    /// <summary>
    /// Runs <paramref name="body"/> with a client on <paramref name="socket"/>'s one connection, then checks that every
    /// answer came in order on it: the client saw no reset and no gap.
    /// </summary>
    private static async Task OnOneConnectionAsync(Socket socket, Func<LineClient, Task> body)
    {
        var client = new LineClient(socket);
        try
        {
            await body(client);
        }
        finally
        {
            await client.DisposeAsync();
        }

        await client.Exchange;
        Assert.Equal(Enumerable.Range(1, client.Replies.Count), client.Replies);
    }

    /// <summary>
    /// A keep-address migration (<paramref name="command"/>, given node B's pod config) whose target fails after the freeze:
    /// node B's base image is removed first. The undo must resume and unlock the source, whose connection goes on being
    /// answered there, and nothing is left on node B.
    /// </summary>
    private static async Task<(int ExitCode, string Stdout, string Stderr)> MigrateFailingOnTheTargetAsync(
        TcpMigrationTopology topology, LineClient client, string firstAnswers, Func<string, string[]> command, string undone)
    {
        var (a, b) = (topology.A, topology.B);
        await RunAsync([.. b.R, "rmi", "localhost/e2e/busybox:tcp"]);
        await client.AnswersAsync(5, firstAnswers);
        var podB = await WritePodAsync(b.Dir, "tcp", $"uid-{topology.Prefix}-b");

        var migrated = await Binaries.RunCrestAsync(command(podB));

        Assert.Equal(1, migrated.ExitCode);
        Assert.Contains("freeze:", migrated.Stderr, StringComparison.Ordinal);
        Assert.Contains(undone, migrated.Stderr, StringComparison.Ordinal);
        var atUndo = client.Replies.Count;
        await client.AnswersAsync(atUndo + 10, $"ten more answers from node A after the undo (had {atUndo})");
        Assert.False(client.Exchange.IsCompleted, $"the connection broke: {client.Failure}\nA: {a.Crestd.Log}");
        Assert.Equal("", await RunAsync([.. b.R, "pods", "-q"]));
        return migrated;
    }

    /// <summary>
    /// After the route switch: ten more answers on the same connection, and the restored server on node B logs that it
    /// answered them (its log goes on counting the same connection's lines).
    /// </summary>
    private static async Task AnswersFromBAfterTheSwitchAsync(LineClient client, int atSwitch, TwoNodes.Node b)
    {
        await client.AnswersAsync(atSwitch + 10, $"ten more answers on the same connection after the route switch (had {atSwitch})");
        Assert.False(client.Exchange.IsCompleted, $"the connection broke: {client.Failure}\nB: {b.Crestd.Log}");
        var logB = b.Dir.Combine("logs-tcp", "server.log");
        await Eventually.UntilAsync(async () => (await ReadLogAsync(logB)).Contains($"served {atSwitch + 5}", StringComparison.Ordinal),
            "the restored server on node B to log the lines it answered", ct: Ct);
    }

    /// <summary>
    /// Runs a migration with <paramref name="args"/>, doing the network's part as a controller watching the target would:
    /// once <paramref name="containers"/> containers run on node B, the client's route to the address goes there
    /// (crest migrate still waits for the target's first log line then). The client's answers at the switch come back too.
    /// </summary>
    private static async Task<((int ExitCode, string Stdout, string Stderr) Migrated, int AtSwitch)> MigrateAcrossTheRouteSwitchAsync(
        TcpMigrationTopology topology, LineClient client, string podIp, int containers, string[] args)
    {
        var migrating = Binaries.RunCrestAsync(args);
        await Eventually.UntilAsync(async () => migrating.IsCompleted || (await RunAsync([.. topology.B.R, "ps", "-q"])).Split('\n', StringSplitOptions.RemoveEmptyEntries).Length == containers,
            $"{containers} container(s) running on node B, or the migration's end", TimeSpan.FromMinutes(2), Ct);
        var atSwitch = client.Replies.Count;
        await topology.RoutePodAsync(podIp, node: 1);
        return (await migrating, atSwitch);
    }

    private static async Task<string> PodIpAsync(string[] r, string podId)
    {
        using var status = JsonDocument.Parse(await RunAsync([.. r, "inspectp", podId]));
        return status.RootElement.GetProperty("status").GetProperty("network").GetProperty("ip").GetString()!;
    }
}
