using System.Net.WebSockets;

namespace Crest.Core;

/// <summary>
/// Sends Kubernetes channel frames on a WebSocket one at a time: a WebSocket allows a single send in flight, and the
/// streams (stdin on one side; stdout, stderr and status on the other) are written from different threads.
/// Used by crestd's streaming server and crest's client alike.
/// </summary>
public sealed class ChannelWebSocketWriter(WebSocket ws) : IDisposable
{
    private readonly SemaphoreSlim _send = new(1, 1);

    public async ValueTask SendAsync(byte channel, ReadOnlyMemory<byte> payload, CancellationToken ct)
    {
        var frame = ChannelProtocol.Frame(channel, payload.Span);
        await _send.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            await ws.SendAsync(frame, WebSocketMessageType.Binary, endOfMessage: true, ct).ConfigureAwait(false);
        }
        finally
        {
            _send.Release();
        }
    }

    public void Dispose() => _send.Dispose();
}
