using System.Runtime.InteropServices;
using Crest.Core;
using Crest.Linux;
using Microsoft.Win32.SafeHandles;

namespace Crest.Cli;

/// <summary>
/// exec and attach on a streaming URL: this process's stdin, stdout and stderr joined to the remote ones; with a
/// terminal, the local terminal in raw mode and its size sent at start and on every SIGWINCH.
/// </summary>
internal static class RemoteCommand
{
    private static readonly string[] Protocols = [ChannelProtocol.V5, ChannelProtocol.V4];

    /// <summary>Runs the session to its end; the remote exit code (attach: 0 unless the server reports a failure).</summary>
    public static async Task<int> RunAsync(string url, bool stdin, bool tty, CancellationToken ct)
    {
        using var client = await StreamClient.ConnectAsync(url, Protocols, ct);
        using var stdout = new FileStream(new SafeFileHandle(1, ownsHandle: false), FileAccess.Write, 1);
        using var stderr = new FileStream(new SafeFileHandle(2, ownsHandle: false), FileAccess.Write, 1);
        using var raw = tty && stdin ? RawTerminal.Enter(0) : null;
        PosixSignalRegistration? winch = null;
        try
        {
            if (tty)
            {
                await SendSizeAsync(client, ct);
                winch = PosixSignalRegistration.Create(PosixSignal.SIGWINCH, signal => { _ = SendSizeAsync(client, CancellationToken.None); });
            }

            if (stdin)
            {
                StartStdinPump(client);
            }

            int? code = null;
            string? failure = null;
            while (await client.ReceiveAsync(ct) is var (channel, payload))
            {
                switch (channel)
                {
                    case ChannelProtocol.Stdout:
                        await stdout.WriteAsync(payload, ct);
                        await stdout.FlushAsync(ct);
                        break;
                    case ChannelProtocol.Stderr:
                        await stderr.WriteAsync(payload, ct);
                        await stderr.FlushAsync(ct);
                        break;
                    case ChannelProtocol.Error when payload.Length > 0:
                        code = ChannelProtocol.ExitCodeOf(payload.Span);
                        if (code is null)
                        {
                            failure = StatusMessage(payload.Span);
                        }

                        break;
                }
            }

            await client.CloseAsync(ct);
            raw?.Dispose();
            if (failure is not null)
            {
                throw new CliFailure(ExitCodes.RuntimeError, failure);
            }

            return code ?? throw new CliFailure(ExitCodes.RuntimeError, "the streaming server closed the connection without reporting an exit status");
        }
        finally
        {
            winch?.Dispose();
        }
    }

    private static async Task SendSizeAsync(StreamClient client, CancellationToken ct)
    {
        if ((PseudoTerminal.GetWindowSize(1) ?? PseudoTerminal.GetWindowSize(0)) is var (columns, rows))
        {
            try
            {
                await client.SendAsync(ChannelProtocol.Resize, ChannelProtocol.Utf8($"{{\"Width\":{columns},\"Height\":{rows}}}"), ct);
            }
            catch (Exception e) when (e is System.Net.WebSockets.WebSocketException or ObjectDisposedException or OperationCanceledException)
            {
            }
        }
    }

    /// <summary>stdin is read on a background thread (reads of a terminal block); EOF is sent as v5's close of channel 0.</summary>
    private static void StartStdinPump(StreamClient client)
    {
        var thread = new Thread(() =>
        {
            using var input = new FileStream(new SafeFileHandle(0, ownsHandle: false), FileAccess.Read, 1);
            var buffer = new byte[32 * 1024];
            try
            {
                while (true)
                {
                    var n = input.Read(buffer, 0, buffer.Length);
                    if (n == 0)
                    {
                        if (client.CanCloseStdin)
                        {
                            client.SendAsync(ChannelProtocol.Close, new byte[] { ChannelProtocol.Stdin }, CancellationToken.None).GetAwaiter().GetResult();
                        }

                        return;
                    }

                    client.SendAsync(ChannelProtocol.Stdin, buffer.AsMemory(0, n), CancellationToken.None).GetAwaiter().GetResult();
                }
            }
            catch (Exception e) when (e is IOException or System.Net.WebSockets.WebSocketException or ObjectDisposedException)
            {
            }
        })
        { IsBackground = true, Name = "crest-stdin" };
        thread.Start();
    }

    private static string StatusMessage(ReadOnlySpan<byte> status)
    {
        try
        {
            using var doc = System.Text.Json.JsonDocument.Parse(status.ToArray());
            return doc.RootElement.TryGetProperty("message", out var m) ? m.GetString() ?? "the remote command failed" : "the remote command failed";
        }
        catch (System.Text.Json.JsonException)
        {
            // Before v4 the error channel carried plain text.
            return System.Text.Encoding.UTF8.GetString(status);
        }
    }
}
