using System.Buffers;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Crest.Core;

/// <summary>
/// Kubernetes' channel protocol over WebSocket (remotecommand and port-forward): every binary message starts with
/// one channel byte. remotecommand: 0 stdin, 1 stdout, 2 stderr, 3 error (v4+: a metav1.Status as JSON), 4 resize
/// ({"Width":..,"Height":..}); v5 adds 255 "close", whose payload names the channel the client has finished
/// writing (stdin's EOF). Port-forward: data channel 2*i and error channel 2*i+1 for the i-th port, each opened
/// by a first message carrying the port as two little-endian bytes. crestd's streaming server and crest's client share it.
/// </summary>
public static class ChannelProtocol
{
    public const string V5 = "v5.channel.k8s.io";
    public const string V4 = "v4.channel.k8s.io";
    public const string PortForward = "portforward.k8s.io";

    public const byte Stdin = 0;
    public const byte Stdout = 1;
    public const byte Stderr = 2;
    public const byte Error = 3;
    public const byte Resize = 4;
    public const byte Close = 255;

    /// <summary>The subprotocols remotecommand accepts, most preferred first.</summary>
    public static readonly IReadOnlyList<string> RemoteCommandProtocols = [V5, V4];

    /// <summary>The subprotocols port-forward accepts (binary only).</summary>
    public static readonly IReadOnlyList<string> PortForwardProtocols = [V4, PortForward];

    /// <summary>The server's most preferred protocol among those the client offered; null when none is supported.</summary>
    public static string? Negotiate(IEnumerable<string> offered, IReadOnlyList<string> supported)
    {
        var set = offered.SelectMany(o => o.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)).ToHashSet(StringComparer.Ordinal);
        return supported.FirstOrDefault(set.Contains);
    }

    public static byte[] Frame(byte channel, ReadOnlySpan<byte> payload)
    {
        var frame = new byte[payload.Length + 1];
        frame[0] = channel;
        payload.CopyTo(frame.AsSpan(1));
        return frame;
    }

    /// <summary>Splits a message into its channel and payload; null for an empty message (which carries nothing).</summary>
    public static (byte Channel, ReadOnlyMemory<byte> Payload)? Parse(ReadOnlyMemory<byte> message) =>
        message.Length == 0 ? null : (message.Span[0], message[1..]);

    /// <summary>A resize message's size; null when it is not the JSON the clients send or a dimension is out of range.</summary>
    public static (ushort Columns, ushort Rows)? ParseResize(ReadOnlySpan<byte> json)
    {
        try
        {
            using var doc = JsonDocument.Parse(json.ToArray());
            if (doc.RootElement.ValueKind == JsonValueKind.Object
                && doc.RootElement.TryGetProperty("Width", out var w) && w.TryGetUInt16(out var width)
                && doc.RootElement.TryGetProperty("Height", out var h) && h.TryGetUInt16(out var height))
            {
                return (width, height);
            }
        }
        catch (JsonException)
        {
        }

        return null;
    }

    /// <summary>The channel a v5 close message names; null when it names none.</summary>
    public static byte? ParseClose(ReadOnlySpan<byte> payload) => payload.Length == 1 ? payload[0] : null;

    public static byte[] SuccessStatus() => Status(w =>
    {
        w.WriteString("status", "Success");
    });

    /// <summary>The status the kubelet writes when a command exits non-zero; clients take the exit code from the cause.</summary>
    public static byte[] ExitCodeStatus(int exitCode) => Status(w =>
    {
        w.WriteString("status", "Failure");
        w.WriteString("message", string.Create(CultureInfo.InvariantCulture, $"command terminated with non-zero exit code: exit status {exitCode}"));
        w.WriteString("reason", "NonZeroExitCode");
        w.WriteStartObject("details");
        w.WriteStartArray("causes");
        w.WriteStartObject();
        w.WriteString("reason", "ExitCode");
        w.WriteString("message", exitCode.ToString(CultureInfo.InvariantCulture));
        w.WriteEndObject();
        w.WriteEndArray();
        w.WriteEndObject();
    });

    /// <summary>A failure that is not an exit code (the container stopped, the command could not start).</summary>
    public static byte[] FailureStatus(string message, string reason = "InternalError") => Status(w =>
    {
        w.WriteString("status", "Failure");
        w.WriteString("message", message);
        w.WriteString("reason", reason);
    });

    /// <summary>The exit code a status message reports: 0 for Success, the ExitCode cause for NonZeroExitCode, null otherwise.</summary>
    public static int? ExitCodeOf(ReadOnlySpan<byte> status)
    {
        using var doc = JsonDocument.Parse(status.ToArray());
        var root = doc.RootElement;
        if (root.TryGetProperty("status", out var s) && s.GetString() == "Success")
        {
            return 0;
        }

        if (root.TryGetProperty("details", out var details) && details.TryGetProperty("causes", out var causes) && causes.ValueKind == JsonValueKind.Array)
        {
            foreach (var cause in causes.EnumerateArray())
            {
                if (cause.TryGetProperty("reason", out var r) && r.GetString() == "ExitCode"
                    && cause.TryGetProperty("message", out var m) && int.TryParse(m.GetString(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var code))
                {
                    return code;
                }
            }
        }

        return null;
    }

    public static byte[] PortPrefix(int port) => [(byte)(port & 0xff), (byte)((port >> 8) & 0xff)];

    private static byte[] Status(Action<Utf8JsonWriter> body)
    {
        var buffer = new ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteStartObject("metadata");
            w.WriteEndObject();
            body(w);
            w.WriteEndObject();
        }

        return buffer.WrittenSpan.ToArray();
    }

    public static string Describe(IReadOnlyList<string> protocols) => string.Join(", ", protocols);

    public static byte[] Utf8(string text) => Encoding.UTF8.GetBytes(text);
}
