using Crest.Core;
using Crest.Runtime;
using Crest.TestKit;

namespace Crest.UnitTests;

public class CniConfigProbeTests
{
    [Fact]
    public void A_missing_conf_dir_is_reported_with_its_path()
    {
        var info = CniConfigProbe.Probe(new CniOptions("/nonexistent/cni", ["/usr/lib/cni"]));

        Assert.False(info.Usable);
        Assert.Contains("/nonexistent/cni does not exist", info.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void An_empty_conf_dir_is_not_ready()
    {
        using var dir = new TempDir();
        var info = CniConfigProbe.Probe(new CniOptions(dir.Path, [dir.Path]));

        Assert.Contains("has no .conflist", info.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void A_network_whose_plugins_are_missing_names_them()
    {
        using var dir = new TempDir();
        var plugins = dir.CreateDirectory("bin");
        File.WriteAllText(Path.Combine(plugins, "bridge"), "");
        CniFixture.WriteBridgeConflist(dir.CreateDirectory("net.d"));

        var info = CniConfigProbe.Probe(new CniOptions(dir.Combine("net.d"), [plugins]));

        Assert.Contains("needs plugins portmap, loopback", info.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void The_lexically_first_valid_network_is_chosen_and_broken_files_are_skipped()
    {
        using var dir = new TempDir();
        var conf = dir.CreateDirectory("net.d");
        var plugins = dir.CreateDirectory("bin");
        foreach (var p in new[] { "bridge", "portmap", "loopback" })
        {
            File.WriteAllText(Path.Combine(plugins, p), "");
        }

        File.WriteAllText(Path.Combine(conf, "00-broken.conflist"), "{ not json");
        CniFixture.WriteBridgeConflist(conf, "second");
        CniFixture.WriteBridgeConflist(conf, "first");

        var info = CniConfigProbe.Probe(new CniOptions(conf, [plugins]));

        Assert.True(info.Usable, info.Problem);
        Assert.Equal("first", info.NetworkName);
        Assert.Equal(["bridge", "portmap", "loopback"], info.PluginTypes);
    }

    [Fact]
    public void Only_broken_files_give_every_reason()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.Combine("a.conflist"), "[]");
        File.WriteAllText(dir.Combine("b.conf"), """{"cniVersion":"1.0.0"}""");

        var info = CniConfigProbe.Probe(new CniOptions(dir.Path, [dir.Path]));

        Assert.Contains("a.conflist is not a JSON object", info.Problem, StringComparison.Ordinal);
        Assert.Contains("b.conf has no network name", info.Problem, StringComparison.Ordinal);
    }
}

public class NodeStatusServiceTests
{
    private sealed class FakeCommands(Func<CommandLine, CommandResult> answer) : ICommandRunner
    {
        public Task<CommandResult> RunAsync(CommandLine command, CancellationToken ct) => Task.FromResult(answer(command));
    }

    private sealed class FakeCriu(CriuInfo info) : ICriuProbe
    {
        public Task<CriuInfo> ProbeAsync(CancellationToken ct) => Task.FromResult(info);
    }

    private static readonly CriuInfo GoodCriu = new("/usr/sbin/criu", "4.2.1", 40201, null);

    private static NodeStatusService Service(TempDir dir, RuntimeOptions runtime, CriuInfo criu, bool checkpointEnabled = true,
        Func<CommandLine, CommandResult>? commands = null, ServiceFacts? service = null)
    {
        var conf = dir.CreateDirectory("net.d");
        CniFixture.WriteBridgeConflist(conf);
        return new NodeStatusService(runtime, new CniOptions(conf, [CniFixture.HostPluginDir]), new CheckpointSwitch(checkpointEnabled, false),
            new RuntimeHandlerProbe(new FakeCommands(commands ?? (_ => new CommandResult(0, "runc version 1.3.6\ncommit: x\n", "")))),
            new FakeCriu(criu), new CrestPaths(dir.Path, dir.Path, dir.Combine("s.sock")), service);
    }

    [Fact]
    public async Task Verbose_status_says_where_metrics_are_served_and_which_unit_runs_crestd()
    {
        using var dir = new TempDir();
        var served = await Service(dir, Runtime(), GoodCriu, service: new ServiceFacts("127.0.0.1:1338", "crestd.service")).GetAsync(TestContext.Current.CancellationToken);
        var plain = await Service(dir, Runtime(), GoodCriu).GetAsync(TestContext.Current.CancellationToken);

        var service = Assert.IsType<System.Text.Json.Nodes.JsonObject>(served.Detail["service"]);
        var none = Assert.IsType<System.Text.Json.Nodes.JsonObject>(plain.Detail["service"]);
        Assert.Equal("http://127.0.0.1:1338/metrics", (string?)service["metricsAddress"]);
        Assert.Equal("crestd.service", (string?)service["systemdUnit"]);
        Assert.StartsWith("off", (string)none["metricsAddress"]!, StringComparison.Ordinal);
        Assert.StartsWith("none", (string)none["systemdUnit"]!, StringComparison.Ordinal);
    }

    private static RuntimeOptions Runtime(string runcPath = "/bin/sh", string conmon = "/bin/sh") =>
        new("runc", [new RuntimeHandlerOptions("runc", runcPath)], CgroupDriver.Cgroupfs, conmon);

    [Fact]
    public async Task A_missing_default_runtime_makes_runtime_not_ready_with_the_path()
    {
        using var dir = new TempDir();
        var status = await Service(dir, Runtime(runcPath: "/nonexistent/runc"), GoodCriu).GetAsync(TestContext.Current.CancellationToken);

        var ready = status.Conditions.Single(c => c.Type == RuntimeCondition.RuntimeReady);
        Assert.False(ready.Status);
        Assert.Equal("OciRuntimeNotFound", ready.Reason);
        Assert.Contains("/nonexistent/runc", ready.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_runtime_that_fails_its_version_call_is_not_ready()
    {
        using var dir = new TempDir();
        var status = await Service(dir, Runtime(), GoodCriu, commands: _ => new CommandResult(1, "", "boom")).GetAsync(TestContext.Current.CancellationToken);

        var ready = status.Conditions.Single(c => c.Type == RuntimeCondition.RuntimeReady);
        Assert.False(ready.Status);
        Assert.Contains("exited 1: boom", ready.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Missing_conmon_makes_runtime_not_ready()
    {
        using var dir = new TempDir();
        var status = await Service(dir, Runtime(conmon: "/nonexistent/conmon"), GoodCriu).GetAsync(TestContext.Current.CancellationToken);

        Assert.Equal("ConmonNotFound", status.Conditions.Single(c => c.Type == RuntimeCondition.RuntimeReady).Reason);
    }

    [Fact]
    public async Task An_old_criu_makes_checkpointing_not_ready_but_leaves_the_node_ready()
    {
        using var dir = new TempDir();
        var old = new CriuInfo("/usr/sbin/criu", "3.17.1", 31701, "CRIU 3.17.1 at /usr/sbin/criu is too old");

        var status = await Service(dir, Runtime(), old).GetAsync(TestContext.Current.CancellationToken);

        Assert.True(status.Conditions.Single(c => c.Type == RuntimeCondition.RuntimeReady).Status);
        var checkpoint = status.Conditions.Single(c => c.Type == RuntimeCondition.CheckpointReady);
        Assert.False(checkpoint.Status);
        Assert.Equal("CriuNotUsable", checkpoint.Reason);
        Assert.Contains("too old", checkpoint.Message, StringComparison.Ordinal);
        var pod = status.Conditions.Single(c => c.Type == RuntimeCondition.PodCheckpointReady);
        Assert.False(pod.Status);
        Assert.Equal("CriuNotUsable", pod.Reason);
    }

    [Fact]
    public async Task Checkpointing_disabled_by_config_says_so()
    {
        using var dir = new TempDir();
        var status = await Service(dir, Runtime(), GoodCriu, checkpointEnabled: false).GetAsync(TestContext.Current.CancellationToken);

        Assert.Equal("CheckpointDisabled", status.Conditions.Single(c => c.Type == RuntimeCondition.CheckpointReady).Reason);
        Assert.Equal("CheckpointDisabled", status.Conditions.Single(c => c.Type == RuntimeCondition.PodCheckpointReady).Reason);
    }

    [Fact]
    public async Task A_healthy_node_is_ready_and_reports_versions()
    {
        using var dir = new TempDir();
        var status = await Service(dir, Runtime(), GoodCriu).GetAsync(TestContext.Current.CancellationToken);

        Assert.All(status.Conditions, c => Assert.True(c.Status, c.Message));
        Assert.Equal("1.3.6", status.Handlers.Single().Version);
    }

    [Theory]
    [InlineData("runc version 1.3.6+ds1\ncommit: v1.3.6\nspec: 1.2.1\n", "1.3.6+ds1")]
    [InlineData("crun version 1.8.1\ncommit: abc\n", "1.8.1")]
    [InlineData("something else", "something else")]
    public void Runtime_versions_are_read_from_the_first_line(string output, string version) =>
        Assert.Equal(version, RuntimeHandlerProbe.ParseVersion(output));
}

public class RuntimeHandlerProbeCacheTests
{
    private sealed class CountingCommands : ICommandRunner
    {
        public int Calls { get; private set; }

        public Task<CommandResult> RunAsync(CommandLine command, CancellationToken ct)
        {
            Calls++;
            return Task.FromResult(new CommandResult(0, "runc version 1.3.6\n", ""));
        }
    }

    [Fact]
    public async Task A_good_version_answer_is_reused_until_the_binary_changes()
    {
        var commands = new CountingCommands();
        var probe = new RuntimeHandlerProbe(commands);
        var handler = new RuntimeHandlerOptions("runc", "/bin/sh");

        await probe.ProbeAsync(handler, TestContext.Current.CancellationToken);
        var second = await probe.ProbeAsync(handler, TestContext.Current.CancellationToken);

        // --version and features, each once.
        Assert.Equal(2, commands.Calls);
        Assert.Equal("1.3.6", second.Version);
    }

    [Fact]
    public async Task Crun_is_refused_while_the_v2_hierarchy_holds_a_controller_and_ready_once_it_moves_to_v1()
    {
        using var dir = new TempDir();
        var crun = dir.Combine("crun");
        await File.WriteAllTextAsync(crun, "#!/bin/sh\n", TestContext.Current.CancellationToken);
        File.SetUnixFileMode(crun, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var commands = new CountingCommands();
        List<string> v2Controllers = ["hugetlb"];
        var probe = new RuntimeHandlerProbe(commands, () => v2Controllers);
        var handler = new RuntimeHandlerOptions("crun", crun);

        var refused = await probe.ProbeAsync(handler, TestContext.Current.CancellationToken);
        v2Controllers.Clear();
        var ready = await probe.ProbeAsync(handler, TestContext.Current.CancellationToken);

        Assert.Contains("v2 hierarchy with the hugetlb controller", refused.Problem, StringComparison.Ordinal);
        Assert.Contains("make deps", refused.Problem, StringComparison.Ordinal);
        Assert.Null(ready.Problem);
        Assert.Equal(2, commands.Calls);
    }

    [Fact]
    public void A_features_document_says_whether_recursive_read_only_and_idmap_mounts_are_there()
    {
        var features = RuntimeHandlerProbe.ParseFeatures("""{"mountOptions":["ro","rro"],"linux":{"namespaces":["user"],"mountExtensions":{"idmap":{"enabled":true}}}}""");

        Assert.True(features.RecursiveReadOnlyMounts);
        Assert.True(features.IdmapMounts);
        Assert.Equal(["user"], features.Namespaces);
        Assert.False(RuntimeHandlerProbe.ParseFeatures("""{"mountOptions":["ro"]}""").RecursiveReadOnlyMounts);
        Assert.False(RuntimeHandlerProbe.ParseFeatures("not json").RecursiveReadOnlyMounts);
    }
}
