using System.Net.WebSockets;
using Crest.Core;

namespace Crest.Cli;

/// <summary>
/// The client end of Kubernetes' channel protocol over WebSocket (<see cref="ChannelProtocol"/>), for the URLs the
/// Exec, Attach and PortForward RPCs return: works against crestd, containerd and CRI-O alike.
/// </summary>
internal sealed class StreamClient : IDisposable
{
    private readonly ClientWebSocket _ws;
    private readonly ChannelWebSocketWriter _writer;

    private StreamClient(ClientWebSocket ws)
    {
        _ws = ws;
        _writer = new ChannelWebSocketWriter(ws);
    }

    /// <summary>The subprotocol the server chose.</summary>
    public string Protocol => _ws.SubProtocol ?? "";

    /// <summary>v5 lets the client say "no more stdin"; v4 cannot.</summary>
    public bool CanCloseStdin => Protocol == ChannelProtocol.V5;

    /// <summary>Connects to <paramref name="url"/> offering <paramref name="protocols"/> in order of preference (v5 first, so a v4-only server falls back).</summary>
    public static async Task<StreamClient> ConnectAsync(string url, IReadOnlyList<string> protocols, CancellationToken ct)
    {
        var uri = new UriBuilder(url);
        uri.Scheme = uri.Scheme == "https" ? "wss" : "ws";
        var ws = new ClientWebSocket();
        ws.Options.CollectHttpResponseDetails = true;
        ws.Options.KeepAliveInterval = TimeSpan.FromSeconds(30);
        foreach (var p in protocols)
        {
            ws.Options.AddSubProtocol(p);
        }

        try
        {
            await ws.ConnectAsync(uri.Uri, ct);
            return new StreamClient(ws);
        }
        catch (WebSocketException e)
        {
            var status = ws.HttpStatusCode;
            ws.Dispose();
            throw new CliFailure(ExitCodes.RuntimeError, $"the streaming server at {url} refused the connection{(status != 0 ? $" (HTTP {(int)status})" : "")}: {e.Message}");
        }
        catch (System.Net.Http.HttpRequestException e)
        {
            ws.Dispose();
            throw new CliFailure(ExitCodes.Unreachable, $"the streaming server at {url} cannot be reached: {e.Message}");
        }
    }

    public Task SendAsync(byte channel, ReadOnlyMemory<byte> payload, CancellationToken ct) => _writer.SendAsync(channel, payload, ct).AsTask();

    /// <summary>The next message's channel and payload; null when the server closed the connection.</summary>
    public async Task<(byte Channel, ReadOnlyMemory<byte> Payload)?> ReceiveAsync(CancellationToken ct)
    {
        var buffer = new byte[64 * 1024];
        using var message = new MemoryStream();
        while (true)
        {
            WebSocketReceiveResult r;
            try
            {
                r = await _ws.ReceiveAsync(buffer, ct);
            }
            catch (WebSocketException)
            {
                return null;
            }

            if (r.MessageType == WebSocketMessageType.Close)
            {
                return null;
            }

            message.Write(buffer, 0, r.Count);
            if (r.EndOfMessage)
            {
                if (ChannelProtocol.Parse(message.ToArray()) is { } parsed)
                {
                    return parsed;
                }

                message.SetLength(0);
            }
        }
    }

    public async Task CloseAsync(CancellationToken ct)
    {
        try
        {
            if (_ws.State is WebSocketState.Open or WebSocketState.CloseReceived)
            {
                await _ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, null, ct);
            }
        }
        catch (WebSocketException)
        {
        }
    }

    public void Dispose()
    {
        _ws.Dispose();
        _writer.Dispose();
    }
}
