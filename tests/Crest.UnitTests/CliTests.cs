using System.Text.Json;
using Crest.Cli;
using Crest.Cli.Commands;
using Crest.Checkpoint.Format;
using Crest.Cli.Output;
using Runtime.V1;

namespace Crest.UnitTests;

public class CriEndpointTests
{
    [Theory]
    [InlineData("unix:///run/crest/crest.sock", "/run/crest/crest.sock")]
    [InlineData("/run/containerd/containerd.sock", "/run/containerd/containerd.sock")]
    [InlineData("  unix:///tmp/x.sock ", "/tmp/x.sock")]
    public void Crictl_spellings_of_a_unix_endpoint_are_accepted(string endpoint, string socket) =>
        Assert.Equal(socket, CriEndpoint.Parse(endpoint).SocketPath);

    [Theory]
    [InlineData("tcp://127.0.0.1:1234", "tcp:// scheme")]
    [InlineData("unix://run/crest.sock", "absolute socket path")]
    [InlineData("crest.sock", "absolute socket path")]
    [InlineData("", "empty")]
    public void Other_endpoints_are_refused_with_a_hint(string endpoint, string expected)
    {
        var e = Assert.Throws<CliUsageException>(() => CriEndpoint.Parse(endpoint));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_flag_wins_over_the_environment_and_the_environment_over_the_default()
    {
        Assert.Equal("/a.sock", CriEndpoint.Resolve("unix:///a.sock", "unix:///b.sock").SocketPath);
        Assert.Equal("/b.sock", CriEndpoint.Resolve(null, "unix:///b.sock").SocketPath);
        Assert.Equal("/run/crest/crest.sock", CriEndpoint.Resolve(" ", null).SocketPath);
    }

    [Theory]
    [InlineData("2s", 2000)]
    [InlineData("500ms", 500)]
    [InlineData("1m", 60000)]
    [InlineData("1.5", 1500)]
    [InlineData("0", 10000)]
    [InlineData(null, 10000)]
    public void Timeouts_parse_like_crictl_durations(string? text, int milliseconds) =>
        Assert.Equal(TimeSpan.FromMilliseconds(milliseconds), CliContext.ParseTimeout(text));

    [Fact]
    public void A_timeout_that_is_not_a_duration_is_a_usage_error() =>
        Assert.Throws<CliUsageException>(() => CliContext.ParseTimeout("soon"));

    [Fact]
    public void The_clients_deadline_and_the_runtimes_deadline_are_told_apart()
    {
        using var connection = new CriConnection(CriEndpoint.Parse("unix:///run/x.sock"), TimeSpan.FromSeconds(7));

        var client = connection.Explain(new Grpc.Core.RpcException(new Grpc.Core.Status(Grpc.Core.StatusCode.DeadlineExceeded, "Deadline Exceeded")), "Rpc");
        var runtime = connection.Explain(new Grpc.Core.RpcException(new Grpc.Core.Status(Grpc.Core.StatusCode.DeadlineExceeded, "checkpoint of container c did not finish within its 2 s timeout")), "Rpc");

        Assert.Equal(ExitCodes.Timeout, client.ExitCode);
        Assert.Contains("did not answer within 7 s", client.Message, StringComparison.Ordinal);
        Assert.Equal(ExitCodes.Timeout, runtime.ExitCode);
        Assert.Equal("Rpc: checkpoint of container c did not finish within its 2 s timeout", runtime.Message);
    }
}

public class OutputTests
{
    [Fact]
    public void Yaml_quotes_scalars_that_yaml_would_read_as_something_else()
    {
        using var doc = JsonDocument.Parse("""{"a":"true","b":"","c":"1.5","d":"plain","e":"x: y","f":[],"g":{}}""");

        var yaml = YamlWriter.Write(doc.RootElement);

        Assert.Equal("a: \"true\"\nb: \"\"\nc: \"1.5\"\nd: plain\ne: \"x: y\"\nf: []\ng: {}\n", yaml);
    }

    [Theory]
    [InlineData("Yes")]
    [InlineData("NULL")]
    [InlineData("True")]
    [InlineData("key:")]
    [InlineData("2026-11-28")]
    [InlineData("0x1F")]
    [InlineData("=")]
    [InlineData("<<")]
    [InlineData(".inf")]
    [InlineData("a #b")]
    public void Yaml_quotes_strings_a_yaml_reader_would_turn_into_something_else(string value)
    {
        using var doc = JsonDocument.Parse(JsonSerializer.Serialize(new Dictionary<string, string> { ["k"] = value }));

        Assert.Equal($"k: {JsonSerializer.Serialize(value)}\n", YamlWriter.Write(doc.RootElement));
    }

    [Fact]
    public void Yaml_leaves_ordinary_words_paths_and_digests_plain()
    {
        using var doc = JsonDocument.Parse("""{"a":"RuntimeReady","b":"/usr/sbin/runc","c":"sha256:abc","d":"docker.io/library/busybox:latest"}""");

        Assert.Equal("a: RuntimeReady\nb: /usr/sbin/runc\nc: sha256:abc\nd: docker.io/library/busybox:latest\n", YamlWriter.Write(doc.RootElement));
    }

    [Fact]
    public void Yaml_nests_sequences_of_mappings_in_block_style()
    {
        using var doc = JsonDocument.Parse("""{"conditions":[{"type":"RuntimeReady","status":true},{"type":"NetworkReady","status":false}],"nums":[1,2]}""");

        var yaml = YamlWriter.Write(doc.RootElement);

        Assert.Equal(
            "conditions:\n  - type: RuntimeReady\n    status: true\n  - type: NetworkReady\n    status: false\nnums:\n  - 1\n  - 2\n",
            yaml);
    }

    [Fact]
    public void Info_json_has_crictls_shape_with_info_values_parsed()
    {
        var response = new StatusResponse { Status = new RuntimeStatus() };
        response.Status.Conditions.Add(new RuntimeCondition { Type = "RuntimeReady", Status = true });
        response.Info["criu"] = """{"version":"4.2.1"}""";
        response.Info["note"] = "not json";

        var doc = InfoCommand.ToDocument(response);

        Assert.Equal("RuntimeReady", (string?)doc["status"]!["conditions"]![0]!["type"]);
        Assert.Equal("4.2.1", (string?)doc["criu"]!["version"]);
        Assert.Equal("not json", (string?)doc["note"]);
    }
}

public class CrictlConfigTests
{
    [Fact]
    public void A_yaml_pod_config_reads_like_its_json_twin()
    {
        var json = Crest.Cli.Output.YamlReader.ToJson("""
            metadata:
              name: web
              uid: "123"
              namespace: default
              attempt: 1
            log_directory: /tmp/logs
            dns_config:
              servers: [10.96.0.10]
            port_mappings:
              - container_port: 80
                host_port: 8080
            linux:
              security_context:
                privileged: false
            """)!.ToJsonString();

        var parsed = new Google.Protobuf.JsonParser(Google.Protobuf.JsonParser.Settings.Default).Parse<global::Runtime.V1.PodSandboxConfig>(json);

        Assert.Equal("web", parsed.Metadata.Name);
        Assert.Equal("123", parsed.Metadata.Uid);
        Assert.Equal(1u, parsed.Metadata.Attempt);
        Assert.Equal("10.96.0.10", parsed.DnsConfig.Servers[0]);
        Assert.Equal(8080, parsed.PortMappings[0].HostPort);
        Assert.False(parsed.Linux.SecurityContext.Privileged);
    }
}

public class CriLogTests
{
    [Fact]
    public void Partial_lines_join_per_stream_and_whole_lines_pass_through()
    {
        var lines = Crest.Cli.CriLogLine.Whole(
        [
            "2026-11-28T10:00:00.000000001Z stdout P hel",
            "2026-11-28T10:00:00.000000002Z stderr F warning",
            "2026-11-28T10:00:00.000000003Z stdout F lo world",
            "not a log line",
            "2026-11-28T10:00:01Z stdout F second",
        ]).ToList();

        Assert.Equal(["warning", "hello world", "second"], lines.Select(l => l.Content));
        Assert.Equal(["stderr", "stdout", "stdout"], lines.Select(l => l.Stream));
    }

    [Fact]
    public void A_joiner_keeps_a_partial_line_across_reads()
    {
        var joiner = new Crest.Cli.CriLogJoiner();

        Assert.Empty(joiner.Add("2026-11-28T10:00:00Z stdout P abc"));
        Assert.Equal("abcdef", Assert.Single(joiner.Add("2026-11-28T10:00:00Z stdout F def")).Content);
    }
}

public class PodCheckpointCliTests
{
    [Fact]
    public void Checkpoint_options_are_key_value_pairs_and_the_value_may_hold_an_equals_sign()
    {
        var options = PodCheckpointCommands.ParseOptions(["tcp-established=true", "note=a=b", "empty="]);

        Assert.Equal("true", options["tcp-established"]);
        Assert.Equal("a=b", options["note"]);
        Assert.Equal("", options["empty"]);
    }

    [Theory]
    [InlineData("novalue")]
    [InlineData("=x")]
    public void A_checkpoint_option_without_a_key_is_a_usage_error(string pair) =>
        Assert.Throws<CliUsageException>(() => PodCheckpointCommands.ParseOptions([pair]));

    [Fact]
    public void A_checkpoint_option_given_twice_is_a_usage_error() =>
        Assert.Contains("twice", Assert.Throws<CliUsageException>(() => PodCheckpointCommands.ParseOptions(["a=1", "a=2"])).Message, StringComparison.Ordinal);
}

public class PodCheckpointInspectTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static PodCheckpointManifest Manifest() => new()
    {
        CheckpointedAt = DateTimeOffset.UnixEpoch,
        SandboxId = "0123456789abcdef",
        Pod = new Crest.Core.PodSpec { Name = "web", Uid = "uid-web", Namespace = "default" },
        Containers = [new PodCheckpointContainer { Name = "app", Id = "c0ffee", Image = "busybox", Spec = new Crest.Core.ContainerSpec { Name = "app", Image = "busybox" }, ArchiveBytes = 42 }],
        FrozenMilliseconds = 12,
    };

    [Fact]
    public async Task An_exported_pod_checkpoint_is_recognised_by_its_manifest_and_shown()
    {
        using var dir = new Crest.TestKit.TempDir();
        var tar = dir.Combine("pod.tar");
        await using (var file = File.Create(tar))
        await using (var w = new System.Formats.Tar.TarWriter(file))
        {
            Crest.TestKit.TestImages.File(w, "containers/app.tar", [1, 2, 3]);
            Crest.TestKit.TestImages.File(w, "pod.json", PodCheckpointManifests.Serialize(Manifest()));
        }

        var manifest = await PodCheckpointCommands.ReadManifestIfPodAsync(tar, Ct);

        Assert.NotNull(manifest);
        var output = new StringWriter();
        await PodCheckpointCommands.WriteInspectAsync(new CliContext(CriEndpoint.Parse("/x.sock"), CriEndpoint.Parse("/x.sock"), TimeSpan.FromSeconds(1), OutputFormat.Json, output), tar, manifest);
        using var doc = JsonDocument.Parse(output.ToString());
        Assert.Equal("web", doc.RootElement.GetProperty("pod").GetString());
        Assert.Equal(42, doc.RootElement.GetProperty("containers")[0].GetProperty("archiveBytes").GetInt64());
        var table = new StringWriter();
        await PodCheckpointCommands.WriteInspectAsync(new CliContext(CriEndpoint.Parse("/x.sock"), CriEndpoint.Parse("/x.sock"), TimeSpan.FromSeconds(1), OutputFormat.Table, table), tar, manifest);
        Assert.Contains("default/web", table.ToString(), StringComparison.Ordinal);
        Assert.Matches(@"app\s+c0ffee\s+42\s+busybox", table.ToString());
    }

    [Fact]
    public async Task A_container_checkpoint_archive_is_not_taken_for_a_pod_checkpoint()
    {
        using var dir = new Crest.TestKit.TempDir();
        var tar = dir.Combine("container.tar");
        await using (var file = File.Create(tar))
        await using (var w = new System.Formats.Tar.TarWriter(file))
        {
            Crest.TestKit.TestImages.File(w, "config.dump", "{}"u8.ToArray());
            Crest.TestKit.TestImages.File(w, "nested/pod.json", "{}"u8.ToArray());
        }

        Assert.Null(await PodCheckpointCommands.ReadManifestIfPodAsync(tar, Ct));
        Assert.Null(await PodCheckpointCommands.ReadManifestIfPodAsync(dir.Path, Ct));
    }
}
