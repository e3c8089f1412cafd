using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Crest.TestKit;

namespace Crest.E2ETests;

public class CliAgainstCrestdTests
{
    [Fact]
    public async Task Crest_version_prints_crictls_four_lines_from_the_crestd_binary()
    {
        using var dir = new TempDir("crest-e2e");
        await using var crestd = await CrestdProcess.StartReadyAsync(dir);

        var (exit, stdout, stderr) = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "version"]);

        Assert.True(exit == 0, stderr);
        Assert.Equal("Version:  0.1.0\nRuntimeName:  crest\nRuntimeVersion:  0.1.0\nRuntimeApiVersion:  v1\n", stdout);
    }

    [Fact]
    public async Task The_endpoint_can_come_from_the_environment_and_output_as_json_or_yaml()
    {
        using var dir = new TempDir("crest-e2e");
        await using var crestd = await CrestdProcess.StartReadyAsync(dir);
        var env = new Dictionary<string, string> { ["CONTAINER_RUNTIME_ENDPOINT"] = crestd.Endpoint };

        var json = await Binaries.RunCrestAsync(["version", "-o", "json"], env);
        var yaml = await Binaries.RunCrestAsync(["version", "-o", "yaml"], env);

        Assert.True(json.ExitCode == 0, json.Stderr);
        using var doc = JsonDocument.Parse(json.Stdout);
        Assert.Equal("crest", doc.RootElement.GetProperty("runtimeName").GetString());
        Assert.Contains("runtimeApiVersion: v1\n", yaml.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Crest_info_reports_real_conditions_and_versions()
    {
        Requires.Binary("runc");
        Requires.Binary("conmon");
        Requires.Binary("criu");
        using var dir = new TempDir("crest-e2e");
        await using var crestd = await CrestdProcess.StartReadyAsync(dir);

        var (exit, stdout, stderr) = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "info"]);

        Assert.True(exit == 0, stderr + stdout);
        using var doc = JsonDocument.Parse(stdout);
        var conditions = doc.RootElement.GetProperty("status").GetProperty("conditions").EnumerateArray()
            .ToDictionary(c => c.GetProperty("type").GetString()!, c => c.GetProperty("status").GetBoolean());
        Assert.True(conditions["RuntimeReady"]);
        Assert.True(conditions["NetworkReady"]);
        Assert.True(conditions["CheckpointReady"]);
        Assert.StartsWith("4.", doc.RootElement.GetProperty("criu").GetProperty("version").GetString(), StringComparison.Ordinal);
        Assert.Equal(dir.Combine("root"), doc.RootElement.GetProperty("paths").GetProperty("root").GetString());
    }

    [Fact]
    public async Task Crest_info_exits_non_zero_when_the_node_is_not_ready()
    {
        using var dir = new TempDir("crest-e2e");
        var config = dir.Combine("config.toml");
        await File.WriteAllTextAsync(config, $"[cni]\nconf_dir = \"{dir.Combine("empty")}\"\n", TestContext.Current.CancellationToken);
        await using var crestd = CrestdProcess.Start("--config", config, "--root", dir.Combine("root"), "--state", dir.Combine("state"));
        await UnixGrpc.WaitForCriAsync(crestd.Socket, TimeSpan.FromSeconds(30), () => crestd.Log);

        var (exit, stdout, _) = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "info", "-o", "table"]);

        Assert.Equal(1, exit);
        Assert.Contains("NetworkReady", stdout, StringComparison.Ordinal);
        Assert.Contains("NetworkPluginNotReady", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_missing_socket_is_named_and_exits_3()
    {
        var (exit, _, stderr) = await Binaries.RunCrestAsync(["-r", "unix:///tmp/crest-none/none.sock", "version"]);

        Assert.Equal(3, exit);
        Assert.Contains("no socket at /tmp/crest-none/none.sock", stderr, StringComparison.Ordinal);
        Assert.Contains("is the runtime running?", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_socket_nobody_listens_on_is_reported_as_refused()
    {
        using var dir = new TempDir("crest-e2e");
        var socket = dir.Combine("dead.sock");
        StaleSocket.Create(socket);

        var (exit, _, stderr) = await Binaries.RunCrestAsync(["-r", "unix://" + socket, "version"]);

        Assert.Equal(3, exit);
        Assert.Contains("connection refused", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_server_that_is_not_cri_is_reported_as_such()
    {
        using var dir = new TempDir("crest-e2e");
        var socket = dir.Combine("http1.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(socket));
        listener.Listen();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var server = Task.Run(async () =>
        {
            while (!cts.IsCancellationRequested)
            {
                using var client = await listener.AcceptAsync(cts.Token);
                await client.SendAsync(Encoding.ASCII.GetBytes("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"), cts.Token);
                client.Shutdown(SocketShutdown.Both);
            }
        }, cts.Token);

        var (exit, _, stderr) = await Binaries.RunCrestAsync(["-r", "unix://" + socket, "-t", "5s", "version"]);
        await cts.CancelAsync();

        Assert.Equal(4, exit);
        Assert.Contains("not a CRI server", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Bad_flags_are_a_usage_error()
    {
        var badOutput = await Binaries.RunCrestAsync(["-r", "unix:///tmp/x.sock", "version", "-o", "xml"]);
        var badEndpoint = await Binaries.RunCrestAsync(["-r", "tcp://127.0.0.1:1", "version"]);
        var badVerb = await Binaries.RunCrestAsync(["frobnicate"]);

        Assert.Equal(2, badOutput.ExitCode);
        Assert.Contains("unknown output format \"xml\"", badOutput.Stderr, StringComparison.Ordinal);
        Assert.Equal(2, badEndpoint.ExitCode);
        Assert.Equal(2, badVerb.ExitCode);
    }
}
