using System.Net;
using System.Net.Sockets;
using Crest.Core;

namespace Crest.Cli;

/// <summary>
/// crest port-forward: listens on a local port and carries each accepted connection over its own WebSocket
/// (one PortForward RPC, one single-use URL per connection) to a port on the pod's loopback.
/// </summary>
internal static class PortForwarder
{
    private static readonly string[] Protocols = [ChannelProtocol.V4, ChannelProtocol.PortForward];

    /// <summary>Carries one local connection to <paramref name="remotePort"/> through <paramref name="url"/>.</summary>
    public static async Task CarryAsync(Socket local, string url, int remotePort, TextWriter errors, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(local);
        var separator = url.Contains('?', StringComparison.Ordinal) ? '&' : '?';
        using var client = await StreamClient.ConnectAsync($"{url}{separator}port={remotePort}", Protocols, ct);
        using var live = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var upstream = Task.Run(async () =>
        {
            var buffer = new byte[32 * 1024];
            try
            {
                while (true)
                {
                    var n = await local.ReceiveAsync(buffer, SocketFlags.None, live.Token);
                    if (n == 0)
                    {
                        return;
                    }

                    await client.SendAsync(0, buffer.AsMemory(0, n), live.Token);
                }
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException or System.Net.WebSockets.WebSocketException)
            {
            }
        }, CancellationToken.None);

        // The first message on each channel is the port (2 bytes, little-endian), not data.
        var seen = new HashSet<byte>();
        while (await client.ReceiveAsync(live.Token) is var (channel, payload))
        {
            if (seen.Add(channel))
            {
                payload = payload.Length >= 2 ? payload[2..] : ReadOnlyMemory<byte>.Empty;
            }

            if (payload.Length == 0)
            {
                continue;
            }

            if (channel == 0)
            {
                await local.SendAsync(payload, SocketFlags.None, live.Token);
            }
            else if (channel == 1)
            {
                await errors.WriteLineAsync($"crest: port-forward: {System.Text.Encoding.UTF8.GetString(payload.Span)}");
            }
        }

        await live.CancelAsync();
        await client.CloseAsync(CancellationToken.None);
        await upstream;
    }

    /// <summary>LOCAL:REMOTE or REMOTE (the same number locally); LOCAL 0 takes any free port.</summary>
    public static (int Local, int Remote) ParseMapping(string text)
    {
        var parts = text.Split(':');
        var numbers = parts.Select(p => int.TryParse(p, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n) ? n : -1).ToArray();
        return numbers switch
        {
            [var remote] when remote is >= 1 and <= 65535 => (remote, remote),
            [var local, var remote] when local is >= 0 and <= 65535 && remote is >= 1 and <= 65535 => (local, remote),
            _ => throw new CliUsageException($"port mapping \"{text}\" must be REMOTE or LOCAL:REMOTE with ports from 1 to 65535 (LOCAL 0: any free port)"),
        };
    }

    public static TcpListener Listen(int port)
    {
        var listener = new TcpListener(IPAddress.Loopback, port);
        try
        {
            listener.Start();
        }
        catch (SocketException e)
        {
            throw new CliFailure(ExitCodes.RuntimeError, $"cannot listen on 127.0.0.1:{port}: {e.Message}");
        }

        return listener;
    }
}
