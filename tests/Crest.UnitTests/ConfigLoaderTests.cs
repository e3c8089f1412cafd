using Crest.Core;
using Crest.Daemon.Config;
using Crest.Runtime;

namespace Crest.UnitTests;

public class ConfigLoaderTests
{
    [Fact]
    public void An_empty_file_gives_the_documented_defaults()
    {
        var config = ConfigLoader.Parse("", "config.toml");

        Assert.Equal("/var/lib/crest", config.Paths.Root);
        Assert.Equal("/run/crest", config.Paths.State);
        Assert.Equal("/run/crest/crest.sock", config.Paths.Socket);
        Assert.Equal("runc", config.Runtime.DefaultHandler);
        Assert.Equal(["runc", "crun"], config.Runtime.Handlers.Select(h => h.Name));
        Assert.Equal(CgroupDriver.Cgroupfs, config.Runtime.CgroupDriver);
        Assert.Equal("/etc/cni/net.d", config.Cni.ConfDir);
        Assert.True(config.Checkpoint.Enabled);
        Assert.False(config.Restore.ViaCreate);
        Assert.Null(config.Metrics.Endpoint);
    }

    [Fact]
    public void Every_documented_key_is_read()
    {
        var config = ConfigLoader.Parse("""
            [paths]
            root = "/srv/crest"
            state = "/run/c2"
            socket = "/run/c2/cri.sock"
            [log]
            level = "debug"
            format = "json"
            [runtime]
            default_handler = "crun"
            cgroup_driver = "cgroupfs"
            conmon_path = "/opt/bin/conmon"
            [runtime.handlers.crun]
            path = "/usr/local/bin/crun"
            [cni]
            conf_dir = "/etc/crest/cni"
            plugin_dirs = ["/opt/cni"]
            [checkpoint]
            enabled = false
            criu_path = "/opt/criu"
            min_criu_version = "4.3"
            [restore]
            via_create = true
            max_rootfs_diff_bytes = 1048576
            max_expansion_ratio = 0
            disk_reserve_bytes = 0
            [images]
            max_expansion_ratio = 500
            disk_reserve_bytes = 2147483648
            [streaming]
            address = "0.0.0.0"
            port = 10010
            [metrics]
            address = "127.0.0.1:1338"
            """, "c.toml");

        Assert.Equal(new CrestPaths("/srv/crest", "/run/c2", "/run/c2/cri.sock"), config.Paths);
        Assert.Equal(new LogConfig("debug", LogFormat.Json), config.Log);
        Assert.Equal("crun", config.Runtime.DefaultHandler);
        Assert.Equal([new RuntimeHandlerOptions("crun", "/usr/local/bin/crun")], config.Runtime.Handlers);
        Assert.Equal(CgroupDriver.Cgroupfs, config.Runtime.CgroupDriver);
        Assert.Equal("/opt/bin/conmon", config.Runtime.ConmonPath);
        Assert.Equal(new CniOptions("/etc/crest/cni", ["/opt/cni"]).ConfDir, config.Cni.ConfDir);
        Assert.Equal(["/opt/cni"], config.Cni.PluginDirs);
        Assert.Equal(new CheckpointConfig(false, "/opt/criu", 40300), config.Checkpoint);
        Assert.True(config.Restore.ViaCreate);
        Assert.Equal(new Crest.Checkpoint.Format.RestoreLimits { MaxRootfsDiffBytes = 1 << 20, MaxExpansionRatio = 0, DiskReserveBytes = 0 }, config.Restore.Limits);
        Assert.Equal(new Crest.Images.ExtractionLimits { MaxExpansionRatio = 500, DiskReserveBytes = 2L << 30 }, config.Images);
        Assert.Equal(new Crest.Daemon.Streaming.StreamingConfig("0.0.0.0", 10010), config.Streaming);
        Assert.Equal(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 1338), config.Metrics.Endpoint);
    }

    [Theory]
    [InlineData("[runtime]\ndefualt_handler = \"runc\"", "runtime.defualt_handler")]
    [InlineData("[checkpiont]\nenabled = true", "checkpiont")]
    [InlineData("[restore]\nvia_create = true\nvia_start = 1", "restore.via_start")]
    public void An_unknown_key_is_an_error_that_names_it(string toml, string key)
    {
        var e = Assert.Throws<CrestException>(() => ConfigLoader.Parse(toml, "/etc/crest/config.toml"));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Contains(key, e.Message, StringComparison.Ordinal);
        Assert.Contains("/etc/crest/config.toml", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("[restore]\nvia_create = \"yes\"", "restore.via_create must be true or false")]
    [InlineData("[cni]\nplugin_dirs = \"/usr/lib/cni\"", "cni.plugin_dirs must be an array of strings")]
    [InlineData("[runtime]\ncgroup_driver = \"cgroupv2\"", "runtime.cgroup_driver must be \"cgroupfs\" or \"systemd\"")]
    [InlineData("[runtime]\ncgroup_driver = \"systemd\"", "\"systemd\" is not supported yet")]
    [InlineData("[runtime]\ndefault_handler = \"kata\"", "runtime.default_handler must be one of the handlers (runc, crun)")]
    [InlineData("[paths]\nroot = \"var/lib/crest\"", "paths.root must be an absolute path")]
    [InlineData("[checkpoint]\nmin_criu_version = \"four\"", "checkpoint.min_criu_version must be a version")]
    [InlineData("[log]\nlevel = \"loud\"", "log.level: expected one of")]
    [InlineData("[checkpoint]\ncriu_path = \"\"", "checkpoint.criu_path must be a non-empty string")]
    [InlineData("[checkpoint]\nwork_in_memory = \"always\"", "checkpoint.work_in_memory must be one of \"auto\", \"tmpfs\", \"never\"")]
    [InlineData("[cni]\nconf_dir = \"etc/cni\"", "cni.conf_dir must be an absolute path")]
    [InlineData("[cni]\nplugin_dirs = [\"lib/cni\"]", "cni.plugin_dirs must be a list of absolute paths")]
    [InlineData("[registries.\"r.example\"]\nmirrors = [\"ftp://m\"]", "mirrors must be a list of http:// or https:// URLs")]
    [InlineData("[streaming]\naddress = \"localhost\"", "streaming.address must be an IP address")]
    [InlineData("[metrics]\naddress = \"localhost:1338\"", "metrics.address must be an IP address and port")]
    [InlineData("[metrics]\naddress = \"127.0.0.1\"", "metrics.address must be an IP address and port")]
    [InlineData("[streaming]\nport = 70000", "streaming.port must be a TCP port from 0 (any free port) to 65535")]
    [InlineData("[streaming]\nport = \"10010\"", "streaming.port must be an integer")]
    [InlineData("[images]\nmax_expansion_ratio = -1", "images.max_expansion_ratio must be 0 (no check) or a positive integer")]
    [InlineData("[images]\ndisk_reserve_bytes = -5", "images.disk_reserve_bytes must be a number of bytes, 0 or more")]
    public void A_value_of_the_wrong_shape_says_what_was_expected(string toml, string expected)
    {
        var e = Assert.Throws<CrestException>(() => ConfigLoader.Parse(toml, "c.toml"));

        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Broken_toml_is_reported_with_the_file_name()
    {
        var e = Assert.Throws<CrestException>(() => ConfigLoader.Parse("[paths\nroot=", "/tmp/x.toml"));

        Assert.Contains("/tmp/x.toml is not valid TOML", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Flags_override_the_file_and_the_socket_follows_an_overridden_state_dir()
    {
        var config = ConfigLoader.ApplyOverrides(new CrestConfig(), new ConfigOverrides(Root: "/tmp/r", State: "/tmp/s", LogLevel: "warn"));

        Assert.Equal(new CrestPaths("/tmp/r", "/tmp/s", "/tmp/s/crest.sock"), config.Paths);
        Assert.Equal("warning", config.Log.Level);
    }

    [Fact]
    public void An_explicit_socket_flag_wins_over_the_state_dir()
    {
        var config = ConfigLoader.ApplyOverrides(new CrestConfig(), new ConfigOverrides(State: "/tmp/s", Socket: "/tmp/other.sock"));

        Assert.Equal("/tmp/other.sock", config.Paths.Socket);
    }

    [Fact]
    public void A_socket_path_too_long_for_a_unix_address_is_refused()
    {
        var e = Assert.Throws<CrestException>(() => ConfigLoader.ApplyOverrides(new CrestConfig(), new ConfigOverrides(Socket: "/tmp/" + new string('s', 120))));

        Assert.Contains("longer than the 107 bytes", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Registries_are_read_per_host()
    {
        var config = ConfigLoader.Parse("""
            [registries."127.0.0.1:5000"]
            username = "alice"
            password = "pw"
            [registries."docker.io"]
            mirrors = ["http://127.0.0.1:5001"]
            [registries."insecure.example:5000"]
            plain_http = true
            """, "c.toml");

        Assert.Equal("alice", config.Registries.For("127.0.0.1:5000").Username);
        Assert.Equal(new Uri("http://127.0.0.1:5001"), Assert.Single(config.Registries.For("docker.io").Mirrors));
        Assert.True(config.Registries.For("insecure.example:5000").PlainHttp);
        Assert.False(config.Registries.For("quay.io").PlainHttp);
    }

    [Fact]
    public void A_missing_config_file_named_on_the_command_line_is_an_error()
    {
        var e = Assert.Throws<CrestException>(() => ConfigLoader.Load(new ConfigOverrides(ConfigFile: "/nonexistent/crest.toml")));

        Assert.Contains("/nonexistent/crest.toml does not exist", e.Message, StringComparison.Ordinal);
    }
}

public class ConfigDocumentationTests
{
    [Fact]
    public void The_reference_in_docs_config_md_is_a_config_crestd_accepts()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "docs", "config.md")))
        {
            dir = dir.Parent;
        }

        Assert.NotNull(dir);
        var markdown = File.ReadAllText(Path.Combine(dir.FullName, "docs", "config.md"));
        var start = markdown.IndexOf("```toml\n", StringComparison.Ordinal) + "```toml\n".Length;
        var toml = markdown[start..markdown.IndexOf("```", start, StringComparison.Ordinal)];

        var config = ConfigLoader.Parse(toml, "docs/config.md");

        Assert.Equal(new CrestConfig().Paths, config.Paths);
        Assert.Equal(new CrestConfig().Streaming, config.Streaming);
        Assert.Equal(["runc", "crun"], config.Runtime.Handlers.Select(h => h.Name));
        Assert.Equal("alice", config.Registries.For("127.0.0.1:5000").Username);
    }
}
