using System.Net.Sockets;
using Grpc.Core;
using Grpc.Net.Client;

namespace Crest.Cli;

/// <summary>A gRPC channel to a CRI endpoint over its unix socket, and the translation of failures into plain words.</summary>
internal sealed class CriConnection : IDisposable
{
    private int _connected;

    public CriConnection(CriEndpoint endpoint, TimeSpan timeout)
    {
        Endpoint = endpoint;
        Timeout = timeout;
        var handler = new SocketsHttpHandler
        {
            // crest migrate reads a checkpoint archive over one stream (ReadArchive): a larger first window than 64 KiB.
            InitialHttp2StreamWindowSize = 8 << 20,
            ConnectCallback = async (_, ct) =>
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(endpoint.SocketPath), ct).ConfigureAwait(false);
                    Interlocked.Exchange(ref _connected, 1);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            },
        };
        Channel = GrpcChannel.ForAddress("http://localhost", new GrpcChannelOptions
        {
            HttpHandler = handler,
            MaxReceiveMessageSize = 64 * 1024 * 1024,
            DisposeHttpClient = true,
        });
    }

    public CriEndpoint Endpoint { get; }

    public TimeSpan Timeout { get; }

    public GrpcChannel Channel { get; }

    public CallOptions CallOptions(CancellationToken ct) => new(deadline: DateTime.UtcNow + Timeout, cancellationToken: ct);

    /// <summary>Checks the socket before the first call so a missing file is named as such, not as a gRPC error.</summary>
    public void CheckSocketExists()
    {
        var path = Endpoint.SocketPath;
        if (Directory.Exists(path))
        {
            throw new CliFailure(ExitCodes.Unreachable, $"{path} is a directory, not a socket; point --runtime-endpoint at the runtime's socket file");
        }

        if (!File.Exists(path))
        {
            var dir = Path.GetDirectoryName(path);
            throw new CliFailure(ExitCodes.Unreachable,
                $"no socket at {path}{(dir is not null && !Directory.Exists(dir) ? $" (directory {dir} does not exist)" : "")}: is the runtime running? Start crestd, or point --runtime-endpoint / CONTAINER_RUNTIME_ENDPOINT at your runtime's socket");
        }
    }

    /// <summary>Grpc.Net.Client's own deadline carries no words of a server (an empty detail or "Deadline Exceeded").</summary>
    private static bool IsClientDeadline(Status status) =>
        status.Detail.Length == 0 || status.Detail.Equals("Deadline Exceeded", StringComparison.OrdinalIgnoreCase);

    /// <summary>Turns an RPC failure into a message and an exit code.</summary>
    public CliFailure Explain(RpcException e, string rpc)
    {
        ArgumentNullException.ThrowIfNull(e);
        var inner = Innermost(e);
        if (e.StatusCode == StatusCode.DeadlineExceeded && !IsClientDeadline(e.Status))
        {
            // The runtime's own deadline (a checkpoint's timeout, say): its words say what ran out.
            return new CliFailure(ExitCodes.Timeout, $"{rpc}: {e.Status.Detail}");
        }

        if (e.StatusCode == StatusCode.DeadlineExceeded)
        {
            return new CliFailure(ExitCodes.Timeout, $"{rpc} on {Endpoint} did not answer within {Timeout.TotalSeconds:0.###} s; raise --timeout or check the runtime's log");
        }

        if (Volatile.Read(ref _connected) == 0 && inner is SocketException se)
        {
            var why = se.SocketErrorCode switch
            {
                SocketError.ConnectionRefused when File.Exists(Endpoint.SocketPath) && new FileInfo(Endpoint.SocketPath).Length > 0 =>
                    "it is a regular file, not a socket",
                SocketError.ConnectionRefused => "nothing is listening there (connection refused): the runtime is not running or left a stale socket",
                SocketError.AccessDenied => "permission denied: run as root or as a member of the socket's group",
                SocketError.AddressNotAvailable => "the socket does not exist",
                _ => se.Message,
            };
            return new CliFailure(ExitCodes.Unreachable, $"cannot connect to {Endpoint}: {why}");
        }

        if (e.StatusCode == StatusCode.Unimplemented)
        {
            return new CliFailure(ExitCodes.NotCri, $"{Endpoint} does not serve {rpc} of CRI runtime.v1 ({e.Status.Detail}); is it a CRI runtime socket?");
        }

        var transport = Chain(e).FirstOrDefault(x => x is IOException or HttpIOException);
        if (Volatile.Read(ref _connected) == 1 && e.StatusCode is StatusCode.Unavailable or StatusCode.Internal or StatusCode.Unknown && transport is not null)
        {
            return new CliFailure(ExitCodes.NotCri, $"{Endpoint} accepted a connection but did not speak gRPC over HTTP/2 ({transport.Message}); it is not a CRI server");
        }

        return new CliFailure(ExitCodes.RuntimeError, $"{rpc} failed: {e.StatusCode}: {e.Status.Detail}");
    }

    public void Dispose() => Channel.Dispose();

    private static IEnumerable<Exception> Chain(Exception e)
    {
        for (Exception? current = e; current is not null; current = current.InnerException)
        {
            yield return current;
        }
    }

    private static Exception Innermost(Exception e)
    {
        var current = e;
        while (current.InnerException is not null)
        {
            current = current.InnerException;
        }

        return current;
    }
}

/// <summary>A failure already explained for the user, with the exit code to leave with.</summary>
internal sealed class CliFailure(int exitCode, string message) : Exception(message)
{
    public int ExitCode { get; } = exitCode;
}
