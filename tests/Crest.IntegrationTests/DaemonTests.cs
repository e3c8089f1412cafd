using System.Text.Json;
using Crest.Core;
using Crest.Daemon;
using Crest.TestKit;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using Runtime.V1;

namespace Crest.IntegrationTests;

public class DaemonTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Version_answers_over_the_unix_socket()
    {
        await using var d = await DaemonHarness.StartAsync();

        var v = await d.Runtime.VersionAsync(new VersionRequest { Version = "0.1.0" }, cancellationToken: Ct);

        Assert.Equal("crest", v.RuntimeName);
        Assert.Equal("v1", v.RuntimeApiVersion);
        Assert.Equal("0.1.0", v.Version);
        Assert.Matches(@"^\d+\.\d+\.\d+", v.RuntimeVersion);
    }

    [Fact]
    public async Task Status_is_ready_on_a_machine_with_the_real_stack()
    {
        Requires.Binary("runc");
        Requires.Binary("crun");
        Requires.Binary("conmon");
        Requires.Binary("criu");
        await using var d = await DaemonHarness.StartAsync();

        var status = await d.Runtime.StatusAsync(new StatusRequest { Verbose = true }, cancellationToken: Ct);

        foreach (var c in status.Status.Conditions)
        {
            Assert.True(c.Status, $"{c.Type}: {c.Reason}: {c.Message}");
        }

        Assert.Equal(["RuntimeReady", "NetworkReady", "CheckpointReady", "PodCheckpointReady"], status.Status.Conditions.Select(c => c.Type));
        Assert.Equal(["", "runc", "crun"], status.RuntimeHandlers.Select(h => h.Name));
        using var criu = JsonDocument.Parse(status.Info["criu"]);
        Assert.True(criu.RootElement.GetProperty("versionNumber").GetInt32() >= 40200, status.Info["criu"]);
        using var runtimes = JsonDocument.Parse(status.Info["ociRuntimes"]);
        Assert.Equal("/usr/sbin/runc", runtimes.RootElement[0].GetProperty("path").GetString());
    }

    [Fact]
    public async Task Crun_is_reported_usable_where_it_can_run_containers()
    {
        Requires.Handler("crun");
        await using var d = await DaemonHarness.StartAsync();

        var status = await d.Runtime.StatusAsync(new StatusRequest { Verbose = true }, cancellationToken: Ct);

        using var runtimes = JsonDocument.Parse(status.Info["ociRuntimes"]);
        var crun = runtimes.RootElement.EnumerateArray().Single(r => r.GetProperty("name").GetString() == "crun");
        var problem = crun.TryGetProperty("problem", out var p) && p.ValueKind == JsonValueKind.String ? p.GetString() : null;
        Assert.Null(problem);
    }

    [Fact]
    public async Task Status_without_verbose_carries_no_info()
    {
        await using var d = await DaemonHarness.StartAsync();

        var status = await d.Runtime.StatusAsync(new StatusRequest(), cancellationToken: Ct);

        Assert.Empty(status.Info);
    }

    [Fact]
    public async Task Without_a_cni_config_the_network_is_not_ready_and_says_why()
    {
        await using var d = await DaemonHarness.StartAsync(c => c with { Cni = c.Cni with { ConfDir = c.Paths.Root + "/no-cni" } });

        var status = await d.Runtime.StatusAsync(new StatusRequest(), cancellationToken: Ct);

        var network = status.Status.Conditions.Single(c => c.Type == "NetworkReady");
        Assert.False(network.Status);
        Assert.Equal("NetworkPluginNotReady", network.Reason);
        Assert.Contains("no-cni does not exist", network.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_missing_oci_runtime_makes_the_runtime_not_ready()
    {
        await using var d = await DaemonHarness.StartAsync(c => c with
        {
            Runtime = c.Runtime with { Handlers = [new Crest.Runtime.RuntimeHandlerOptions("runc", "/nonexistent/runc")] },
        });

        var status = await d.Runtime.StatusAsync(new StatusRequest(), cancellationToken: Ct);

        var runtime = status.Status.Conditions.Single(c => c.Type == "RuntimeReady");
        Assert.False(runtime.Status);
        Assert.Equal("OciRuntimeNotFound", runtime.Reason);
        Assert.Contains("/nonexistent/runc", runtime.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_criu_older_than_required_makes_checkpointing_not_ready()
    {
        Requires.Binary("criu");
        await using var d = await DaemonHarness.StartAsync(c => c with { Checkpoint = c.Checkpoint with { MinimumCriuVersion = 990000 } });

        var status = await d.Runtime.StatusAsync(new StatusRequest(), cancellationToken: Ct);

        var checkpoint = status.Status.Conditions.Single(c => c.Type == "CheckpointReady");
        Assert.False(checkpoint.Status);
        Assert.Contains("is too old: Crest needs CRIU >= 99.0.0", checkpoint.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_missing_criu_is_named_in_the_checkpoint_condition()
    {
        await using var d = await DaemonHarness.StartAsync(c => c with { Checkpoint = c.Checkpoint with { CriuPath = "/nonexistent/criu" } });

        var status = await d.Runtime.StatusAsync(new StatusRequest(), cancellationToken: Ct);

        var checkpoint = status.Status.Conditions.Single(c => c.Type == "CheckpointReady");
        Assert.False(checkpoint.Status);
        Assert.Contains("'/nonexistent/criu' was not found", checkpoint.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(Crest.Runtime.CgroupDriver.Cgroupfs, CgroupDriver.Cgroupfs)]
    [InlineData(Crest.Runtime.CgroupDriver.Systemd, CgroupDriver.Systemd)]
    public async Task RuntimeConfig_reports_the_configured_cgroup_driver(Crest.Runtime.CgroupDriver configured, CgroupDriver reported)
    {
        await using var d = await DaemonHarness.StartAsync(c => c with { Runtime = c.Runtime with { CgroupDriver = configured } });

        var config = await d.Runtime.RuntimeConfigAsync(new RuntimeConfigRequest(), cancellationToken: Ct);

        Assert.Equal(reported, config.Linux.CgroupDriver);
    }

    [Fact]
    public async Task Streaming_rpcs_refuse_unknown_objects_and_the_streaming_port_serves_no_grpc()
    {
        await using var d = await DaemonHarness.StartAsync();

        var exec = await Assert.ThrowsAsync<RpcException>(() => d.Runtime.ExecAsync(new ExecRequest { ContainerId = "x", Cmd = { "sh" }, Stdout = true }, cancellationToken: Ct).ResponseAsync);
        var portForward = await Assert.ThrowsAsync<RpcException>(() => d.Runtime.PortForwardAsync(new PortForwardRequest { PodSandboxId = "x" }, cancellationToken: Ct).ResponseAsync);
        var attach = await Assert.ThrowsAsync<RpcException>(() => d.Runtime.AttachAsync(new AttachRequest { ContainerId = "x", Stdout = true }, cancellationToken: Ct).ResponseAsync);
        var baseUrl = d.Daemon.Services.GetRequiredService<Crest.Daemon.Streaming.StreamingServer>().BaseUrl();
        using var http = new HttpClient();
        using var grpcPath = await http.GetAsync(new Uri(baseUrl + "/runtime.v1.RuntimeService/Version"), Ct);
        using var plainGet = await http.GetAsync(new Uri(baseUrl + "/exec/sometoken"), Ct);

        Assert.Equal(StatusCode.NotFound, exec.StatusCode);
        Assert.Equal(StatusCode.NotFound, portForward.StatusCode);
        Assert.Equal(StatusCode.NotFound, attach.StatusCode);
        Assert.Matches(@"^http://127\.0\.0\.1:\d+$", baseUrl);
        Assert.Equal(System.Net.HttpStatusCode.NotFound, grpcPath.StatusCode);
        Assert.Equal(System.Net.HttpStatusCode.BadRequest, plainGet.StatusCode);
        Assert.Contains("v5.channel.k8s.io, v4.channel.k8s.io", await plainGet.Content.ReadAsStringAsync(Ct), StringComparison.Ordinal);
    }

    [Fact]
    public async Task CheckpointContainer_checks_its_request_before_any_work()
    {
        await using var d = await DaemonHarness.StartAsync();

        var noLocation = await Assert.ThrowsAsync<RpcException>(() => d.Runtime.CheckpointContainerAsync(new CheckpointContainerRequest { ContainerId = "x" }, cancellationToken: Ct).ResponseAsync);
        var relative = await Assert.ThrowsAsync<RpcException>(() => d.Runtime.CheckpointContainerAsync(new CheckpointContainerRequest { ContainerId = "x", Location = "cp.tar" }, cancellationToken: Ct).ResponseAsync);
        var unknown = await Assert.ThrowsAsync<RpcException>(() => d.Runtime.CheckpointContainerAsync(new CheckpointContainerRequest { ContainerId = "0123456789", Location = "/tmp/cp.tar" }, cancellationToken: Ct).ResponseAsync);

        Assert.Equal(StatusCode.InvalidArgument, noLocation.StatusCode);
        Assert.Equal(StatusCode.InvalidArgument, relative.StatusCode);
        Assert.Contains("must be an absolute path", relative.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
        Assert.False(File.Exists("/tmp/cp.tar"));
    }

    [Fact]
    public async Task The_socket_is_mode_0660()
    {
        await using var d = await DaemonHarness.StartAsync();

        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite, File.GetUnixFileMode(d.Socket));
    }

    [Fact]
    public async Task The_store_is_created_with_its_schema()
    {
        await using var d = await DaemonHarness.StartAsync();

        Assert.True(File.Exists(d.Daemon.Config.Paths.Database));
    }

    [Fact]
    public async Task A_second_daemon_on_a_live_socket_is_refused()
    {
        await using var first = await DaemonHarness.StartAsync();
        using var other = new TempDir("crest-it");
        var config = DaemonHarness.Config(other) with { };
        config = config with { Paths = config.Paths with { Socket = first.Socket } };

        var e = await Assert.ThrowsAsync<CrestException>(() => CrestDaemon.StartAsync(config, Ct));

        Assert.Equal(ErrorKind.AlreadyExists, e.Kind);
        Assert.Contains($"another server is listening on {first.Socket}", e.Message, StringComparison.Ordinal);
        // The first daemon is unharmed.
        await first.Runtime.VersionAsync(new VersionRequest(), cancellationToken: Ct);
    }

    [Fact]
    public async Task A_second_daemon_on_the_same_state_dir_is_refused()
    {
        await using var first = await DaemonHarness.StartAsync();
        var config = first.Daemon.Config with { Paths = first.Daemon.Config.Paths with { Socket = first.Dir.Combine("other.sock") } };

        var e = await Assert.ThrowsAsync<CrestException>(() => CrestDaemon.StartAsync(config, Ct));

        Assert.Contains("another crestd holds", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_second_daemon_on_the_same_root_is_refused_even_with_its_own_state()
    {
        await using var first = await DaemonHarness.StartAsync();
        using var other = new TempDir("crest-it");
        var config = first.Daemon.Config with
        {
            Paths = new CrestPaths(first.Daemon.Config.Paths.Root, other.Combine("state"), other.Combine("state", "crest.sock")),
        };

        var e = await Assert.ThrowsAsync<CrestException>(() => CrestDaemon.StartAsync(config, Ct));

        Assert.Contains($"another crestd holds {first.Daemon.Config.Paths.Root}/crestd.lock", e.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(other.Combine("state", "crest.sock")));
    }

    [Fact]
    public async Task A_malformed_cni_file_makes_the_network_not_ready_instead_of_breaking_status()
    {
        await using var d = await DaemonHarness.StartAsync(c =>
        {
            var conf = c.Paths.Root + "-badcni";
            Directory.CreateDirectory(conf);
            File.WriteAllText(Path.Combine(conf, "10-bad.conflist"), """{"name":"bad","plugins":[1]}""");
            return c with { Cni = c.Cni with { ConfDir = conf } };
        });

        var status = await d.Runtime.StatusAsync(new StatusRequest(), cancellationToken: Ct);

        var network = status.Status.Conditions.Single(c => c.Type == "NetworkReady");
        Assert.False(network.Status);
        Assert.Contains("has a plugin without a type", network.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_stale_socket_left_by_a_crash_is_replaced()
    {
        using var dir = new TempDir("crest-it");
        var config = DaemonHarness.Config(dir);
        Directory.CreateDirectory(config.Paths.State);
        StaleSocket.Create(config.Paths.Socket);
        Assert.True(Crest.Linux.FileKinds.IsSocket(config.Paths.Socket));

        await using var daemon = await CrestDaemon.StartAsync(config, Ct);
        using var channel = UnixGrpc.Channel(config.Paths.Socket);
        var v = await new RuntimeService.RuntimeServiceClient(channel).VersionAsync(new VersionRequest(), cancellationToken: Ct);
        Assert.Equal("crest", v.RuntimeName);
    }

    [Fact]
    public async Task A_regular_file_at_the_socket_path_is_left_alone_and_refused()
    {
        using var dir = new TempDir("crest-it");
        var config = DaemonHarness.Config(dir);
        Directory.CreateDirectory(config.Paths.State);
        await File.WriteAllTextAsync(config.Paths.Socket, "precious", Ct);

        var e = await Assert.ThrowsAsync<CrestException>(() => CrestDaemon.StartAsync(config, Ct));

        Assert.Contains("exists and is not a socket", e.Message, StringComparison.Ordinal);
        Assert.Equal("precious", await File.ReadAllTextAsync(config.Paths.Socket, Ct));
    }

    [Fact]
    public async Task Stopping_the_daemon_removes_its_socket_and_frees_the_roots()
    {
        using var dir = new TempDir("crest-it");
        var config = DaemonHarness.Config(dir);
        var daemon = await CrestDaemon.StartAsync(config, Ct);

        await daemon.DisposeAsync();

        Assert.False(File.Exists(config.Paths.Socket));
        await using var again = await CrestDaemon.StartAsync(config, Ct);
    }
}
