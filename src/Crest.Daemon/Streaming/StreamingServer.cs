using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using Crest.Core;
using Crest.Runtime;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Crest.Daemon.Streaming;

/// <summary>Where the streaming server listens (config.toml [streaming]); port 0 takes an ephemeral port.</summary>
public sealed record StreamingConfig(string Address = "127.0.0.1", int Port = 0);

/// <summary>
/// The streaming server of the CRI Exec, Attach and PortForward RPCs: an HTTP/1.1 endpoint on TCP, next to the
/// gRPC socket, that redeems the single-use tokens those RPCs hand out and speaks Kubernetes' channel protocol
/// over WebSocket (<see cref="ChannelProtocol"/>) or SPDY/3.1 (<see cref="SpdyStreaming"/>); anything else gets a 400 that names both.
/// </summary>
internal sealed class StreamingServer(StreamRequestCache cache, ContainerService containers, SandboxService sandboxes, IServer server, ILogger<StreamingServer> logger)
{
    private const int MaxMessageBytes = 1 << 20;
    private static readonly TimeSpan CloseHandshake = TimeSpan.FromSeconds(2);

    /// <summary>Stores <paramref name="request"/> under a new token and returns the URL that redeems it.</summary>
    public string CreateUrl(string verb, StreamRequest request) => $"{BaseUrl()}/{verb}/{cache.Insert(request)}";

    /// <summary>http://address:port of the TCP endpoint as bound (an ephemeral port is known only after start).</summary>
    public string BaseUrl()
    {
        var addresses = server.Features.Get<IServerAddressesFeature>()?.Addresses ?? [];
        var tcp = addresses.Select(a => Uri.TryCreate(a, UriKind.Absolute, out var u) ? u : null)
            .FirstOrDefault(u => u is not null && IPAddress.TryParse(u.Host.Trim('[', ']'), out _))
            ?? throw new CrestException(ErrorKind.Unavailable, "the streaming server is not listening yet");
        var ip = IPAddress.Parse(tcp.Host.Trim('[', ']'));
        if (ip.Equals(IPAddress.Any) || ip.Equals(IPAddress.IPv6Any))
        {
            // Listening on every address: advertise one the kubelet can reach.
            ip = Dns.GetHostAddresses(Dns.GetHostName()).FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a)) ?? IPAddress.Loopback;
        }

        return new UriBuilder("http", ip.ToString(), tcp.Port).Uri.ToString().TrimEnd('/');
    }

    public async Task HandleAsync(HttpContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var path = context.Request.Path.Value?.Trim('/').Split('/') ?? [];
        if (path is not [("exec" or "attach" or "portforward") and var verb, { Length: > 0 } token])
        {
            await RefuseAsync(context, StatusCodes.Status404NotFound, "crestd's streaming server serves /exec/TOKEN, /attach/TOKEN and /portforward/TOKEN only");
            return;
        }

        if (!context.WebSockets.IsWebSocketRequest && context.Request.Headers.Upgrade.Any(u => u?.StartsWith("SPDY/3.1", StringComparison.OrdinalIgnoreCase) == true))
        {
            await SpdyStreaming.ServeAsync(context, verb, token, this);
            return;
        }

        var supported = verb == "portforward" ? ChannelProtocol.PortForwardProtocols : ChannelProtocol.RemoteCommandProtocols;
        var offered = context.WebSockets.IsWebSocketRequest ? context.WebSockets.WebSocketRequestedProtocols : [];
        var protocol = ChannelProtocol.Negotiate(offered, supported);
        // Port-forward clients may offer no subprotocol at all; the binary protocol is then implied, as in the kubelet.
        var bareAllowed = verb == "portforward" && offered.Count == 0;
        if (!context.WebSockets.IsWebSocketRequest || (protocol is null && !bareAllowed))
        {
            await RefuseAsync(context, StatusCodes.Status400BadRequest,
                $"{verb} on crestd's streaming server needs a WebSocket upgrade with one of the subprotocols {ChannelProtocol.Describe(supported)}, " +
                $"or a SPDY/3.1 upgrade (offered: {(context.Request.Headers.Upgrade.Count > 0 ? context.Request.Headers.Upgrade.ToString() : "no upgrade")}" +
                $"{(offered.Count > 0 ? ", subprotocols " + string.Join(", ", offered) : "")})");
            return;
        }

        var request = Redeem(verb, token);
        if (request is null)
        {
            await RefuseAsync(context, StatusCodes.Status404NotFound, $"streaming token {token} is unknown, already used or expired (tokens last {StreamRequestCache.Lifetime.TotalSeconds:0} s and serve one connection)");
            return;
        }

        IReadOnlyList<int> ports = [];
        if (request is PortForwardStreamRequest pf)
        {
            var parsed = ParsePorts(context.Request.Query["port"]);
            if (parsed is null)
            {
                await RefuseAsync(context, StatusCodes.Status400BadRequest, "query parameter \"port\" must be TCP ports (1-65535), repeated or comma-separated");
                return;
            }

            ports = parsed.Count > 0 ? parsed : pf.Ports;
            if (ports.Count == 0)
            {
                await RefuseAsync(context, StatusCodes.Status400BadRequest, "port-forward needs at least one port: query parameter \"port\"");
                return;
            }
        }

        using var ws = await context.WebSockets.AcceptWebSocketAsync(new WebSocketAcceptContext { SubProtocol = protocol });
        var aborted = context.RequestAborted;
        try
        {
            switch (request)
            {
                case ExecStreamRequest exec:
                    DaemonLog.StreamSession(logger, "exec", exec.ContainerId, protocol ?? "");
                    await ServeRemoteCommandAsync(ws, protocol!, exec.Streams, ct => OpenAsync(exec, ct), aborted);
                    break;
                case AttachStreamRequest attach:
                    DaemonLog.StreamSession(logger, "attach", attach.ContainerId, protocol ?? "");
                    await ServeRemoteCommandAsync(ws, protocol!, attach.Streams, ct => OpenAsync(attach, ct), aborted);
                    break;
                case PortForwardStreamRequest forward:
                    DaemonLog.StreamSession(logger, "portforward", forward.SandboxId, protocol ?? "");
                    await ServePortForwardAsync(ws, forward.SandboxId, ports, aborted);
                    break;
            }
        }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException or IOException)
        {
            // The client went away; the session's resources are released by the using blocks.
            DaemonLog.StreamSessionEnded(logger, verb, e.Message);
        }
    }

    /// <summary>The request behind a token, if it is one for <paramref name="verb"/>; the token is spent either way.</summary>
    internal StreamRequest? Redeem(string verb, string token)
    {
        var request = cache.Consume(token);
        var expected = verb switch { "exec" => typeof(ExecStreamRequest), "attach" => typeof(AttachStreamRequest), _ => typeof(PortForwardStreamRequest) };
        return request?.GetType() == expected ? request : null;
    }

    /// <summary>Starts what an exec or attach request asks for.</summary>
    internal Task<IStreamSession> OpenAsync(StreamRequest request, CancellationToken ct) => request switch
    {
        ExecStreamRequest exec => containers.ExecAsync(exec.ContainerId, exec.Command, exec.Streams, ct),
        AttachStreamRequest attach => containers.AttachAsync(attach.ContainerId, attach.Streams, ct),
        _ => throw new ArgumentException("not an exec or attach request", nameof(request)),
    };

    internal Task<Socket> ConnectPortAsync(string sandboxId, int port, CancellationToken ct) => sandboxes.ConnectPortAsync(sandboxId, port, ct);

    internal ILogger Logger => logger;

    internal static Task RefuseWithAsync(HttpContext context, int status, string message) => RefuseAsync(context, status, message);

    private static async Task ServeRemoteCommandAsync(WebSocket ws, string protocol, StreamOptions streams, Func<CancellationToken, Task<IStreamSession>> open, CancellationToken aborted)
    {
        using var channels = new ChannelWebSocketWriter(ws);
        IStreamSession session;
        try
        {
            session = await open(aborted);
        }
        catch (CrestException e)
        {
            await channels.SendAsync(ChannelProtocol.Error, ChannelProtocol.FailureStatus(e.Message), aborted);
            await CloseAsync(ws, aborted);
            return;
        }

        await using (session)
        {
            // An empty message on the lowest channel the client reads tells it the stream is up (as the kubelet does).
            await channels.SendAsync(streams.Stdout ? ChannelProtocol.Stdout : streams.Stderr ? ChannelProtocol.Stderr : ChannelProtocol.Error, ReadOnlyMemory<byte>.Empty, aborted);
            using var live = CancellationTokenSource.CreateLinkedTokenSource(aborted);
            var input = ReadInputAsync(ws, session, protocol == ChannelProtocol.V5, live);
            int? code;
            try
            {
                code = await session.PumpAsync((which, data, ct) => channels.SendAsync(which == OutputChannel.Stdout ? ChannelProtocol.Stdout : ChannelProtocol.Stderr, data, ct), live.Token);
            }
            catch (OperationCanceledException)
            {
                return; // the client left: the session is torn down (an exec'd command is killed)
            }

            await channels.SendAsync(ChannelProtocol.Error, code is null or 0 ? ChannelProtocol.SuccessStatus() : ChannelProtocol.ExitCodeStatus(code.Value), aborted);
            await CloseAsync(ws, aborted);
            await Task.WhenAny(input, Task.Delay(CloseHandshake, aborted));
            await live.CancelAsync();
        }
    }

    /// <summary>Client messages: stdin bytes, resizes, and (v5) the end of stdin. A client that closes cancels the session.</summary>
    private static async Task ReadInputAsync(WebSocket ws, IStreamSession session, bool v5, CancellationTokenSource live)
    {
        try
        {
            while (await ReceiveAsync(ws, live.Token) is { } message)
            {
                if (ChannelProtocol.Parse(message) is not var (channel, payload))
                {
                    continue;
                }

                switch (channel)
                {
                    case ChannelProtocol.Stdin when payload.Length > 0:
                        await session.WriteInputAsync(payload, live.Token);
                        break;
                    case ChannelProtocol.Resize when ChannelProtocol.ParseResize(payload.Span) is var (columns, rows):
                        session.Resize(columns, rows);
                        break;
                    case ChannelProtocol.Close when v5 && ChannelProtocol.ParseClose(payload.Span) == ChannelProtocol.Stdin:
                        session.CloseInput();
                        break;
                }
            }
        }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException or IOException)
        {
        }

        await live.CancelAsync();
    }

    private async Task ServePortForwardAsync(WebSocket ws, string sandboxId, IReadOnlyList<int> ports, CancellationToken aborted)
    {
        using var channels = new ChannelWebSocketWriter(ws);
        var sockets = new Socket?[ports.Count];
        try
        {
            for (var i = 0; i < ports.Count; i++)
            {
                var prefix = ChannelProtocol.PortPrefix(ports[i]);
                await channels.SendAsync((byte)(2 * i), prefix, aborted);
                await channels.SendAsync((byte)(2 * i + 1), prefix, aborted);
            }

            for (var i = 0; i < ports.Count; i++)
            {
                try
                {
                    sockets[i] = await sandboxes.ConnectPortAsync(sandboxId, ports[i], aborted);
                }
                catch (CrestException e)
                {
                    DaemonLog.PortForwardFailed(logger, sandboxId, ports[i], e.Message);
                    await channels.SendAsync((byte)(2 * i + 1), ChannelProtocol.Utf8($"error forwarding port {ports[i]} to pod {sandboxId}: {e.Message}"), aborted);
                }
            }

            using var live = CancellationTokenSource.CreateLinkedTokenSource(aborted);
            var outputs = sockets.Select((s, i) => s is null ? Task.CompletedTask : PumpSocketAsync(s, (byte)(2 * i), channels, live.Token)).ToList();
            var input = ReadPortInputAsync(ws, sockets, live);
            // Done when every pod-side connection has ended, or when the client leaves.
            await Task.WhenAny(Task.WhenAll(outputs), input);
            if (!input.IsCompleted)
            {
                await CloseAsync(ws, aborted);
                await Task.WhenAny(input, Task.Delay(CloseHandshake, aborted));
            }

            await live.CancelAsync();
        }
        finally
        {
            foreach (var s in sockets)
            {
                s?.Dispose();
            }
        }
    }

    private static async Task PumpSocketAsync(Socket socket, byte channel, ChannelWebSocketWriter channels, CancellationToken ct)
    {
        var buffer = new byte[32 * 1024];
        try
        {
            while (true)
            {
                var n = await socket.ReceiveAsync(buffer, SocketFlags.None, ct);
                if (n == 0)
                {
                    return;
                }

                await channels.SendAsync(channel, buffer.AsMemory(0, n), ct);
            }
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or WebSocketException)
        {
        }
    }

    private static async Task ReadPortInputAsync(WebSocket ws, Socket?[] sockets, CancellationTokenSource live)
    {
        try
        {
            while (await ReceiveAsync(ws, live.Token) is { } message)
            {
                if (ChannelProtocol.Parse(message) is var (channel, payload) && channel % 2 == 0 && channel / 2 < sockets.Length
                    && sockets[channel / 2] is { } target && payload.Length > 0)
                {
                    await target.SendAsync(payload, SocketFlags.None, live.Token);
                }
            }
        }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException or SocketException)
        {
        }
    }

    /// <summary>One whole message; null when the client closed.</summary>
    private static async Task<ReadOnlyMemory<byte>?> ReceiveAsync(WebSocket ws, CancellationToken ct)
    {
        var buffer = new byte[64 * 1024];
        using var message = new MemoryStream();
        while (true)
        {
            var r = await ws.ReceiveAsync(buffer, ct);
            if (r.MessageType == WebSocketMessageType.Close)
            {
                return null;
            }

            message.Write(buffer, 0, r.Count);
            if (message.Length > MaxMessageBytes)
            {
                throw new WebSocketException(WebSocketError.Faulted, $"a message larger than {MaxMessageBytes} bytes");
            }

            if (r.EndOfMessage)
            {
                return message.ToArray();
            }
        }
    }

    private static async Task CloseAsync(WebSocket ws, CancellationToken ct)
    {
        if (ws.State is WebSocketState.Open or WebSocketState.CloseReceived)
        {
            await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, null, ct);
        }
    }

    private static List<int>? ParsePorts(Microsoft.Extensions.Primitives.StringValues values)
    {
        var ports = new List<int>();
        foreach (var value in values)
        {
            foreach (var p in (value ?? "").Split(','))
            {
                if (!int.TryParse(p, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var port) || port is < 1 or > 65535)
                {
                    return null;
                }

                ports.Add(port);
            }
        }

        return ports;
    }

    private static async Task RefuseAsync(HttpContext context, int status, string message)
    {
        context.Response.StatusCode = status;
        context.Response.ContentType = "text/plain; charset=utf-8";
        await context.Response.WriteAsync(message + "\n", context.RequestAborted);
    }
}
