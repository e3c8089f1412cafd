using System.Net.Sockets;
using Grpc.Net.Client;

namespace Crest.TestKit;

/// <summary>gRPC channels to unix sockets, for tests that speak raw CRI.</summary>
public static class UnixGrpc
{
    public static GrpcChannel Channel(string socketPath) => GrpcChannel.ForAddress("http://localhost", new GrpcChannelOptions
    {
        HttpHandler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, ct) =>
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            },
        },
        DisposeHttpClient = true,
    });

    /// <summary>Polls until a CRI Version call answers on <paramref name="socketPath"/>, or fails after <paramref name="timeout"/>.</summary>
    public static async Task WaitForCriAsync(string socketPath, TimeSpan timeout, Func<string>? diagnostics = null)
    {
        Exception? last = null;
        var answered = await Eventually.LastAsync(
            async () =>
            {
                if (!File.Exists(socketPath))
                {
                    return false;
                }

                using var channel = Channel(socketPath);
                try
                {
                    await new Runtime.V1.RuntimeService.RuntimeServiceClient(channel)
                        .VersionAsync(new Runtime.V1.VersionRequest(), deadline: DateTime.UtcNow.AddSeconds(2));
                    return true;
                }
                catch (Grpc.Core.RpcException e)
                {
                    last = e;
                    return false;
                }
            },
            ok => ok, timeout);
        if (!answered)
        {
            throw new TimeoutException($"no CRI server answered on {socketPath} within {timeout}: {last?.Message}\n{diagnostics?.Invoke()}");
        }
    }
}
