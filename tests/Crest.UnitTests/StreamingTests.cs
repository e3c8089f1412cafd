using System.Text;
using System.Text.Json;
using Crest.Cli;
using Crest.Core;
using Crest.Daemon.Cri;
using Crest.Daemon.Streaming;
using Crest.Runtime;
using Microsoft.Extensions.Time.Testing;

namespace Crest.UnitTests;

/// <summary>The streaming server's tokens and the channel protocol's frames, without a daemon.</summary>
public class StreamingTests
{
    private static ExecStreamRequest Exec(string id = "c1") => new(id, ["sh"], new StreamOptions(false, true, true, false));

    [Fact]
    public void A_token_is_redeemed_once()
    {
        var cache = new StreamRequestCache(new FakeTimeProvider());
        var request = Exec();
        var token = cache.Insert(request);

        Assert.Same(request, cache.Consume(token));
        Assert.Null(cache.Consume(token));
        Assert.Equal(0, cache.Count);
    }

    [Fact]
    public void A_token_expires_after_one_minute()
    {
        var clock = new FakeTimeProvider();
        var cache = new StreamRequestCache(clock);
        var early = cache.Insert(Exec("early"));
        var late = cache.Insert(Exec("late"));

        clock.Advance(TimeSpan.FromSeconds(59));
        var redeemedInTime = cache.Consume(early);
        clock.Advance(TimeSpan.FromSeconds(1));
        var redeemedLate = cache.Consume(late);

        Assert.Equal("early", Assert.IsType<ExecStreamRequest>(redeemedInTime).ContainerId);
        Assert.Null(redeemedLate);
    }

    [Fact]
    public void Tokens_are_distinct_unguessable_and_url_safe()
    {
        var cache = new StreamRequestCache(new FakeTimeProvider());
        var tokens = Enumerable.Range(0, 200).Select(_ => cache.Insert(Exec())).ToList();

        Assert.Equal(200, tokens.Distinct(StringComparer.Ordinal).Count());
        Assert.All(tokens, t => Assert.Matches("^[A-Za-z0-9_-]{22}$", t));
        Assert.Null(cache.Consume("not-a-token"));
    }

    [Fact]
    public void At_most_a_thousand_requests_wait_and_expired_ones_make_room()
    {
        var clock = new FakeTimeProvider();
        var cache = new StreamRequestCache(clock);
        for (var i = 0; i < StreamRequestCache.MaxInFlight; i++)
        {
            cache.Insert(Exec());
        }

        var full = Assert.Throws<CrestException>(() => cache.Insert(Exec()));
        clock.Advance(StreamRequestCache.Lifetime);
        var token = cache.Insert(Exec("after"));

        Assert.Equal(ErrorKind.ResourceExhausted, full.Kind);
        Assert.Equal(1, cache.Count);
        Assert.NotNull(cache.Consume(token));
    }

    [Fact]
    public void A_frame_is_the_channel_byte_then_the_payload_and_parses_back()
    {
        var frame = ChannelProtocol.Frame(ChannelProtocol.Stderr, "oops"u8);

        Assert.Equal([2, (byte)'o', (byte)'o', (byte)'p', (byte)'s'], frame);
        var (channel, payload) = ChannelProtocol.Parse(frame)!.Value;
        Assert.Equal(ChannelProtocol.Stderr, channel);
        Assert.Equal("oops", Encoding.UTF8.GetString(payload.Span));
        Assert.Null(ChannelProtocol.Parse(ReadOnlyMemory<byte>.Empty));
        Assert.Equal([1], ChannelProtocol.Frame(ChannelProtocol.Stdout, ReadOnlySpan<byte>.Empty));
    }

    [Theory]
    [InlineData("{\"Width\":120,\"Height\":40}", 120, 40)]
    [InlineData("{\"Height\":24,\"Width\":80,\"extra\":true}", 80, 24)]
    public void A_resize_message_gives_columns_and_rows(string json, int columns, int rows)
    {
        Assert.Equal(((ushort)columns, (ushort)rows), ChannelProtocol.ParseResize(Encoding.UTF8.GetBytes(json)));
    }

    [Theory]
    [InlineData("{\"Width\":-1,\"Height\":40}")]
    [InlineData("{\"Width\":70000,\"Height\":40}")]
    [InlineData("{\"width\":80,\"height\":24}")]
    [InlineData("[80,24]")]
    [InlineData("80x24")]
    public void A_malformed_resize_message_is_ignored(string json)
    {
        Assert.Null(ChannelProtocol.ParseResize(Encoding.UTF8.GetBytes(json)));
    }

    [Fact]
    public void The_status_of_a_non_zero_exit_is_the_kubelets_and_carries_the_code()
    {
        var status = ChannelProtocol.ExitCodeStatus(42);
        using var doc = JsonDocument.Parse(status);
        var root = doc.RootElement;

        Assert.Equal("Failure", root.GetProperty("status").GetString());
        Assert.Equal("NonZeroExitCode", root.GetProperty("reason").GetString());
        var cause = Assert.Single(root.GetProperty("details").GetProperty("causes").EnumerateArray());
        Assert.Equal("ExitCode", cause.GetProperty("reason").GetString());
        Assert.Equal("42", cause.GetProperty("message").GetString());
        Assert.Equal(JsonValueKind.Object, root.GetProperty("metadata").ValueKind);
        Assert.Equal(42, ChannelProtocol.ExitCodeOf(status));
    }

    [Fact]
    public void Success_is_exit_code_zero_and_other_failures_have_none()
    {
        Assert.Equal("{\"metadata\":{},\"status\":\"Success\"}", Encoding.UTF8.GetString(ChannelProtocol.SuccessStatus()));
        Assert.Equal(0, ChannelProtocol.ExitCodeOf(ChannelProtocol.SuccessStatus()));
        Assert.Null(ChannelProtocol.ExitCodeOf(ChannelProtocol.FailureStatus("container is in CONTAINER_EXITED state")));
    }

    [Theory]
    [InlineData(new[] { "v4.channel.k8s.io", "v5.channel.k8s.io" }, "v5.channel.k8s.io")]
    [InlineData(new[] { "v5.channel.k8s.io, v4.channel.k8s.io" }, "v5.channel.k8s.io")]
    [InlineData(new[] { "v4.channel.k8s.io" }, "v4.channel.k8s.io")]
    [InlineData(new[] { "channel.k8s.io", "base64.channel.k8s.io", "v4.base64.channel.k8s.io" }, null)]
    [InlineData(new string[0], null)]
    public void Remotecommand_negotiates_the_newest_binary_protocol_offered(string[] offered, string? chosen)
    {
        Assert.Equal(chosen, ChannelProtocol.Negotiate(offered, ChannelProtocol.RemoteCommandProtocols));
    }

    [Fact]
    public void A_port_prefix_is_two_little_endian_bytes()
    {
        Assert.Equal([0x90, 0x1F], ChannelProtocol.PortPrefix(8080));
        Assert.Equal([0xFF, 0xFF], ChannelProtocol.PortPrefix(65535));
    }

    [Fact]
    public void The_stream_checks_are_the_kubelets()
    {
        var tty = Assert.Throws<CrestException>(() => CriRuntimeService.StreamsOf(stdin: true, stdout: true, stderr: true, tty: true));
        var none = Assert.Throws<CrestException>(() => CriRuntimeService.StreamsOf(stdin: false, stdout: false, stderr: false, tty: false));

        Assert.Equal("tty and stderr cannot both be true", tty.Message);
        Assert.Equal("one of stdin, stdout, or stderr must be set", none.Message);
        Assert.Equal(ErrorKind.InvalidArgument, none.Kind);
        Assert.Equal(new StreamOptions(true, false, false, false), CriRuntimeService.StreamsOf(stdin: true, stdout: false, stderr: false, tty: false));
    }

    [Theory]
    [InlineData("8080", 8080, 8080)]
    [InlineData("0:80", 0, 80)]
    [InlineData("9000:80", 9000, 80)]
    public void A_port_mapping_is_local_colon_remote(string text, int local, int remote)
    {
        Assert.Equal((local, remote), PortForwarder.ParseMapping(text));
    }

    [Theory]
    [InlineData("0")]
    [InlineData("80:0")]
    [InlineData("a:80")]
    [InlineData("1:2:3")]
    [InlineData("70000")]
    public void A_bad_port_mapping_is_a_usage_error(string text)
    {
        Assert.Throws<CliUsageException>(() => PortForwarder.ParseMapping(text));
    }

    [Fact]
    public void Runc_exec_runs_the_process_file_whatever_the_runtime_defaults()
    {
        var options = new RuncExecOptions { ContainerId = "abc", ProcessFile = "/run/p.json", PidFile = "/run/p.pid" };

        Assert.Equal(["--root=/run/crest/runtime/crun", "exec", "--pid-file", "/run/p.pid", "--process", "/run/p.json", "abc"], options.Arguments("/run/crest/runtime/crun"));
        Assert.Equal(options.Arguments("/r"), (options with { Tty = true }).Arguments("/r"));
    }

    [Fact]
    public void The_spdy_header_dictionary_is_the_one_in_draft_3()
    {
        var dictionary = SpdyConnection.HeaderDictionary;

        Assert.Equal(1423, dictionary.Length);
        Assert.Equal("51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02", Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(dictionary)));
    }

    [Fact]
    public void Spdy_header_blocks_survive_one_zlib_stream_per_direction()
    {
        using var deflater = new Crest.Linux.ZlibDeflater(SpdyConnection.HeaderDictionary);
        using var inflater = new Crest.Linux.ZlibInflater(SpdyConnection.HeaderDictionary);

        var first = SpdyConnection.DecodeHeaders(inflater.Inflate(deflater.Deflate(SpdyConnection.EncodeHeaders([("streamType", "stdout"), ("port", "8080")]))));
        var second = SpdyConnection.DecodeHeaders(inflater.Inflate(deflater.Deflate(SpdyConnection.EncodeHeaders([("streamType", "error"), ("requestID", "7")]))));
        var empty = SpdyConnection.DecodeHeaders(inflater.Inflate(deflater.Deflate(SpdyConnection.EncodeHeaders([]))));

        Assert.Equal("stdout", first["streamtype"]);
        Assert.Equal("8080", first["port"]);
        Assert.Equal("error", second["streamtype"]);
        Assert.Equal("7", second["requestid"]);
        Assert.Empty(empty);
    }

    [Fact]
    public void A_header_block_compressed_with_another_dictionary_is_refused()
    {
        using var deflater = new Crest.Linux.ZlibDeflater("not the spdy dictionary"u8.ToArray());
        using var inflater = new Crest.Linux.ZlibInflater(SpdyConnection.HeaderDictionary);

        Assert.Throws<InvalidDataException>(() => inflater.Inflate(deflater.Deflate(SpdyConnection.EncodeHeaders([("streamtype", "stdin")]))));
    }

    [Fact]
    public async Task A_spdy_session_delivers_a_streams_headers_and_data_to_its_fin_and_echoes_pings()
    {
        using var deflater = new Crest.Linux.ZlibDeflater(SpdyConnection.HeaderDictionary);
        var block = deflater.Deflate(SpdyConnection.EncodeHeaders([("streamtype", "stdin")]));
        var input = new MemoryStream();
        void Control(int type, byte flags, byte[] payload)
        {
            input.Write([0x80, 3, 0, (byte)type, flags, (byte)(payload.Length >> 16), (byte)(payload.Length >> 8), (byte)payload.Length]);
            input.Write(payload);
        }

        void Data(uint id, byte flags, byte[] payload)
        {
            input.Write([(byte)(id >> 24), (byte)(id >> 16), (byte)(id >> 8), (byte)id, flags, (byte)(payload.Length >> 16), (byte)(payload.Length >> 8), (byte)payload.Length]);
            input.Write(payload);
        }

        Control(1, 0, [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, .. block]);
        Control(6, 0, [0, 0, 0, 9]);
        Data(1, 0, "hello "u8.ToArray());
        Data(1, 1, "world"u8.ToArray());
        input.Position = 0;
        var output = new MemoryStream();
        using var spdy = new SpdyConnection(new DuplexStream(input, output));

        await spdy.RunAsync(TestContext.Current.CancellationToken);
        var stream = await spdy.Incoming.ReadAsync(TestContext.Current.CancellationToken);
        var received = new List<byte>();
        while (await stream.ReadAsync(TestContext.Current.CancellationToken) is { } data)
        {
            received.AddRange(data);
        }

        Assert.Equal(1u, stream.Id);
        Assert.Equal("stdin", stream.Header("streamtype"));
        Assert.Equal("hello world", Encoding.UTF8.GetString(received.ToArray()));
        Assert.Equal([0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 9], output.ToArray());
    }

    /// <summary>Reads from one stream and writes to another, as an upgraded connection does.</summary>
    private sealed class DuplexStream(Stream read, Stream write) : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => write.Flush();
        public override int Read(byte[] buffer, int offset, int count) => read.Read(buffer, offset, count);
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => write.Write(buffer, offset, count);
    }
}
