using System.Net.Sockets;
using System.Threading.Channels;
using Crest.Core;
using Crest.Runtime;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;

namespace Crest.Daemon.Streaming;

/// <summary>
/// The streaming protocols over SPDY/3.1, as the kubelet's server speaks them to client-go (the API server's proxy,
/// crictl's default): remotecommand v4 (one SPDY stream per stdin, stdout, stderr, error and resize, each named by
/// its streamtype header; the end of stdin is the stream's FIN) and port-forward (a data and an error stream per
/// connection, paired by requestid, many connections on one session).
/// </summary>
internal static class SpdyStreaming
{
    public const string ProtocolHeader = "X-Stream-Protocol-Version";
    private static readonly string[] RemoteCommandProtocols = [ChannelProtocol.V4];
    private static readonly string[] PortForwardProtocols = [ChannelProtocol.PortForward];
    private static readonly TimeSpan StreamCreation = TimeSpan.FromSeconds(30);

    public static async Task ServeAsync(HttpContext context, string verb, string token, StreamingServer server)
    {
        var supported = verb == "portforward" ? PortForwardProtocols : RemoteCommandProtocols;
        var offered = context.Request.Headers[ProtocolHeader].SelectMany(v => (v ?? "").Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)).ToList();
        var protocol = ChannelProtocol.Negotiate(offered, supported);
        var upgrade = context.Features.Get<IHttpUpgradeFeature>();
        if (protocol is null || upgrade is not { IsUpgradableRequest: true })
        {
            await StreamingServer.RefuseWithAsync(context, StatusCodes.Status400BadRequest,
                $"{verb} over SPDY/3.1 needs {ProtocolHeader}: {string.Join(", ", supported)} and an upgradable request (offered: {(offered.Count > 0 ? string.Join(", ", offered) : "none")})");
            return;
        }

        var request = server.Redeem(verb, token);
        if (request is null)
        {
            await StreamingServer.RefuseWithAsync(context, StatusCodes.Status404NotFound, $"streaming token {token} is unknown, already used or expired (tokens last {StreamRequestCache.Lifetime.TotalSeconds:0} s and serve one connection)");
            return;
        }

        context.Response.Headers[ProtocolHeader] = protocol;
        context.Response.Headers.Upgrade = "SPDY/3.1";
        await using var transport = await upgrade.UpgradeAsync();
        using var spdy = new SpdyConnection(transport);
        using var live = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted);
        // The client closing the connection ends the session (an exec'd command is killed).
        var reading = spdy.RunAsync(live.Token).ContinueWith(_ => live.Cancel(), TaskScheduler.Default);
        try
        {
            switch (request)
            {
                case ExecStreamRequest exec:
                    DaemonLog.StreamSession(server.Logger, "exec", exec.ContainerId, "SPDY/3.1 " + protocol);
                    await ServeRemoteCommandAsync(spdy, exec.Streams, ct => server.OpenAsync(exec, ct), live.Token);
                    break;
                case AttachStreamRequest attach:
                    DaemonLog.StreamSession(server.Logger, "attach", attach.ContainerId, "SPDY/3.1 " + protocol);
                    await ServeRemoteCommandAsync(spdy, attach.Streams, ct => server.OpenAsync(attach, ct), live.Token);
                    break;
                case PortForwardStreamRequest forward:
                    DaemonLog.StreamSession(server.Logger, "portforward", forward.SandboxId, "SPDY/3.1 " + protocol);
                    await ServePortForwardAsync(spdy, forward.SandboxId, server, live.Token);
                    break;
            }

            await spdy.GoAwayAsync(live.Token);
            await Task.WhenAny(reading, Task.Delay(TimeSpan.FromSeconds(2), live.Token));
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or ChannelClosedException or InvalidDataException)
        {
            DaemonLog.StreamSessionEnded(server.Logger, verb, e.Message);
        }
        finally
        {
            await live.CancelAsync();
            await reading;
        }
    }

    private static async Task ServeRemoteCommandAsync(SpdyConnection spdy, StreamOptions options, Func<CancellationToken, Task<IStreamSession>> open, CancellationToken ct)
    {
        var expected = new HashSet<string>(StringComparer.Ordinal) { "error" };
        if (options.Stdin)
        {
            expected.Add("stdin");
        }

        if (options.Stdout)
        {
            expected.Add("stdout");
        }

        if (options.Stderr && !options.Tty)
        {
            expected.Add("stderr");
        }

        if (options.Tty)
        {
            expected.Add("resize");
        }

        // The client opens its streams first and waits for each reply; the session starts once all are there.
        var streams = new Dictionary<string, SpdyStream>(StringComparer.Ordinal);
        using (var creation = CancellationTokenSource.CreateLinkedTokenSource(ct))
        {
            creation.CancelAfter(StreamCreation);
            while (!expected.IsSubsetOf(streams.Keys))
            {
                var stream = await spdy.Incoming.ReadAsync(creation.Token);
                await spdy.ReplyAsync(stream, ct);
                streams[stream.Header("streamtype")] = stream;
            }
        }

        var error = streams["error"];
        IStreamSession session;
        try
        {
            session = await open(ct);
        }
        catch (CrestException e)
        {
            await error.WriteAsync(ChannelProtocol.FailureStatus(e.Message), ct);
            await CloseAllAsync(streams.Values, ct);
            return;
        }

        await using (session)
        {
            var stdout = streams.GetValueOrDefault("stdout");
            var stderr = streams.GetValueOrDefault("stderr");
            var input = streams.TryGetValue("stdin", out var stdin) ? CopyInputAsync(stdin, session, ct) : Task.CompletedTask;
            var resizes = streams.TryGetValue("resize", out var resize) ? ReadResizesAsync(resize, session, ct) : Task.CompletedTask;
            var code = await session.PumpAsync(async (which, data, token) =>
            {
                if ((which == OutputChannel.Stdout ? stdout : stderr) is { } target)
                {
                    await target.WriteAsync(data, token);
                }
            }, ct);
            await error.WriteAsync(code is null or 0 ? ChannelProtocol.SuccessStatus() : ChannelProtocol.ExitCodeStatus(code.Value), ct);
            await CloseAllAsync(streams.Values, ct);
        }
    }

    private static async Task CloseAllAsync(IEnumerable<SpdyStream> streams, CancellationToken ct)
    {
        foreach (var s in streams)
        {
            await s.CloseAsync(ct);
        }
    }

    private static async Task CopyInputAsync(SpdyStream stdin, IStreamSession session, CancellationToken ct)
    {
        try
        {
            while (await stdin.ReadAsync(ct) is { } data)
            {
                await session.WriteInputAsync(data, ct);
            }

            session.CloseInput();
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>The resize stream carries JSON objects one after another ({"Width":..,"Height":..}).</summary>
    private static async Task ReadResizesAsync(SpdyStream resize, IStreamSession session, CancellationToken ct)
    {
        var pending = new List<byte>();
        try
        {
            while (await resize.ReadAsync(ct) is { } data)
            {
                pending.AddRange(data);
                int end;
                while ((end = pending.IndexOf((byte)'}')) >= 0)
                {
                    var json = pending.GetRange(0, end + 1).ToArray();
                    pending.RemoveRange(0, end + 1);
                    if (ChannelProtocol.ParseResize(json.AsSpan(Math.Max(0, Array.IndexOf(json, (byte)'{')))) is var (columns, rows))
                    {
                        session.Resize(columns, rows);
                    }
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private static async Task ServePortForwardAsync(SpdyConnection spdy, string sandboxId, StreamingServer server, CancellationToken ct)
    {
        var halves = new Dictionary<string, SpdyStream>(StringComparer.Ordinal);
        var forwards = new List<Task>();
        await foreach (var stream in spdy.Incoming.ReadAllAsync(ct))
        {
            await spdy.ReplyAsync(stream, ct);
            var key = stream.Header("requestid");
            var type = stream.Header("streamtype");
            if (!halves.Remove(key + (type == "data" ? "/error" : "/data"), out var other))
            {
                halves[key + "/" + type] = stream;
                continue;
            }

            var (data, error) = type == "data" ? (stream, other) : (other, stream);
            forwards.Add(ForwardAsync(data, error, sandboxId, server, ct));
        }

        await Task.WhenAll(forwards);
    }

    private static async Task ForwardAsync(SpdyStream data, SpdyStream error, string sandboxId, StreamingServer server, CancellationToken ct)
    {
        try
        {
            if (!int.TryParse(data.Header("port"), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var port))
            {
                await error.WriteAsync(ChannelProtocol.Utf8($"port \"{data.Header("port")}\" is not a TCP port"), ct);
                await CloseAllAsync([error, data], ct);
                return;
            }

            Socket socket;
            try
            {
                socket = await server.ConnectPortAsync(sandboxId, port, ct);
            }
            catch (CrestException e)
            {
                DaemonLog.PortForwardFailed(server.Logger, sandboxId, port, e.Message);
                await error.WriteAsync(ChannelProtocol.Utf8($"error forwarding port {port} to pod {sandboxId}: {e.Message}"), ct);
                await CloseAllAsync([error, data], ct);
                return;
            }

            using (socket)
            {
                var up = Task.Run(async () =>
                {
                    while (await data.ReadAsync(ct) is { } bytes)
                    {
                        await socket.SendAsync(bytes, SocketFlags.None, ct);
                    }

                    socket.Shutdown(SocketShutdown.Send);
                }, ct);
                var buffer = new byte[32 * 1024];
                int n;
                while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None, ct)) > 0)
                {
                    await data.WriteAsync(buffer.AsMemory(0, n), ct);
                }

                await CloseAllAsync([data, error], ct);
                await up;
            }
        }
        catch (Exception e) when (e is SocketException or IOException or OperationCanceledException)
        {
        }
    }
}
