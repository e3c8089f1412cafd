using System.Net;
using System.Net.Sockets;
using System.Text;
using Crest.TestKit;
using Runtime.V1;

namespace Crest.E2ETests;

/// <summary>
/// Just enough of an API server for kubectl, and the kubelet's part of exec/attach/port-forward: discovery, one running pod, and
/// for pods/NAME/exec, attach and portforward the kubelet's move: ask the runtime for a streaming URL over CRI, then
/// proxy kubectl's upgrade request to it unchanged (path aside) and copy bytes both ways. kubectl's client-go is then
/// the far end of crestd's streaming server, as it is on a node.
/// </summary>
internal sealed class KubeletProxy : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _stop = new();
    private readonly RuntimeService.RuntimeServiceClient _cri;
    private readonly Grpc.Net.Client.GrpcChannel _channel;
    private readonly string _namespace;
    private readonly string _pod;
    private readonly IReadOnlyDictionary<string, string> _containers;
    private readonly Task _accepting;

    private readonly string _sandbox;

    public KubeletProxy(string criSocket, string ns, string pod, IReadOnlyDictionary<string, string> containers, string sandbox = "")
    {
        _sandbox = sandbox;
        _channel = UnixGrpc.Channel(criSocket);
        _cri = new RuntimeService.RuntimeServiceClient(_channel);
        _namespace = ns;
        _pod = pod;
        _containers = containers;
        _listener.Start();
        _accepting = AcceptAsync();
    }

    public string Server => $"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";

    /// <summary>The upgrade protocols kubectl asked for, in order of requests.</summary>
    public List<string> Upgrades { get; } = [];

    public string WriteKubeconfig(TempDir dir)
    {
        var path = dir.Combine("kubeconfig");
        File.WriteAllText(path, $"""
            apiVersion: v1
            kind: Config
            clusters:
            - name: crest
              cluster:
                server: {Server}
            users:
            - name: crest
              user: {"{}"}
            contexts:
            - name: crest
              context:
                cluster: crest
                user: crest
                namespace: {_namespace}
            current-context: crest
            """);
        return path;
    }

    private async Task AcceptAsync()
    {
        try
        {
            while (true)
            {
                var client = await _listener.AcceptTcpClientAsync(_stop.Token);
                _ = Task.Run(() => ServeAsync(client));
            }
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
    }

    private async Task ServeAsync(TcpClient client)
    {
        using (client)
        {
            var stream = client.GetStream();
            try
            {
                var (head, rest) = await ReadHeadAsync(stream);
                var lines = head.Split("\r\n");
                var parts = lines[0].Split(' ');
                var (method, target) = (parts[0], parts[1]);
                var path = target.Split('?')[0];
                var query = target.Contains('?', StringComparison.Ordinal) ? target[(target.IndexOf('?', StringComparison.Ordinal) + 1)..] : "";
                var podPath = $"/api/v1/namespaces/{_namespace}/pods/{_pod}";
                if (path == $"{podPath}/exec" || path == $"{podPath}/attach" || path == $"{podPath}/portforward")
                {
                    var upgrade = lines.FirstOrDefault(l => l.StartsWith("Sec-WebSocket-Protocol:", StringComparison.OrdinalIgnoreCase))
                        ?? lines.FirstOrDefault(l => l.StartsWith("Upgrade:", StringComparison.OrdinalIgnoreCase)) ?? "none";
                    lock (Upgrades)
                    {
                        Upgrades.Add(upgrade);
                    }

                    await ProxyStreamAsync(stream, method, path[(path.LastIndexOf('/') + 1)..], Query(query), lines, rest);
                    return;
                }

                var body = path switch
                {
                    "/api" => """{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[]}""",
                    "/apis" => """{"kind":"APIGroupList","apiVersion":"v1","groups":[]}""",
                    "/api/v1" => """{"kind":"APIResourceList","groupVersion":"v1","resources":[{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"],"shortNames":["po"]},{"name":"pods/exec","singularName":"","namespaced":true,"kind":"PodExecOptions","verbs":["create","get"]},{"name":"pods/attach","singularName":"","namespaced":true,"kind":"PodAttachOptions","verbs":["create","get"]},{"name":"pods/portforward","singularName":"","namespaced":true,"kind":"PodPortForwardOptions","verbs":["create","get"]}]}""",
                    _ when path == podPath => $$"""{"apiVersion":"v1","kind":"Pod","metadata":{"name":"{{_pod}}","namespace":"{{_namespace}}","uid":"uid"},"spec":{"containers":[{{string.Join(",", _containers.Keys.Select(c => $$"""{"name":"{{c}}","image":"busybox","stdin":true}"""))}}]},"status":{"phase":"Running"} }""",
                    _ => null,
                };
                var status = body is null ? "404 Not Found" : "200 OK";
                body ??= """{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}""";
                var bytes = Encoding.UTF8.GetBytes(body);
                await stream.WriteAsync(Encoding.ASCII.GetBytes($"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {bytes.Length}\r\nConnection: close\r\n\r\n"));
                await stream.WriteAsync(bytes);
            }
            catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or Grpc.Core.RpcException)
            {
            }
        }
    }

    /// <summary>The kubelet's proxy: a CRI Exec/Attach for a URL, then the client's own request to it and a byte pipe.</summary>
    private async Task ProxyStreamAsync(NetworkStream client, string method, string verb, ILookup<string, string> query, string[] lines, byte[] rest)
    {
        bool Flag(string name) => query[name].FirstOrDefault() is "true" or "1";
        var container = _containers[query["container"].FirstOrDefault() ?? _containers.Keys.First()];
        var url = verb switch
        {
            "exec" => (await _cri.ExecAsync(new ExecRequest { ContainerId = container, Cmd = { query["command"] }, Stdin = Flag("stdin"), Stdout = Flag("stdout"), Stderr = Flag("stderr"), Tty = Flag("tty") })).Url,
            "attach" => (await _cri.AttachAsync(new AttachRequest { ContainerId = container, Stdin = Flag("stdin"), Stdout = Flag("stdout"), Stderr = Flag("stderr"), Tty = Flag("tty") })).Url,
            _ => (await _cri.PortForwardAsync(new PortForwardRequest { PodSandboxId = _sandbox })).Url,
        };
        var uri = new Uri(url);
        using var upstream = new TcpClient();
        await upstream.ConnectAsync(uri.Host, uri.Port);
        var server = upstream.GetStream();
        var request = new StringBuilder($"{method} {uri.PathAndQuery} HTTP/1.1\r\n");
        foreach (var line in lines.Skip(1).Where(l => l.Length > 0))
        {
            request.Append(line.StartsWith("Host:", StringComparison.OrdinalIgnoreCase) ? $"Host: {uri.Authority}" : line).Append("\r\n");
        }

        request.Append("\r\n");
        await server.WriteAsync(Encoding.ASCII.GetBytes(request.ToString()));
        await server.WriteAsync(rest);
        var up = client.CopyToAsync(server);
        var down = server.CopyToAsync(client);
        await Task.WhenAny(up, down);
    }

    private static ILookup<string, string> Query(string query) => query.Split('&', StringSplitOptions.RemoveEmptyEntries)
        .Select(p => p.Split('=', 2))
        .ToLookup(p => Uri.UnescapeDataString(p[0]), p => p.Length > 1 ? Uri.UnescapeDataString(p[1].Replace('+', ' ')) : "");

    private static async Task<(string Head, byte[] Body)> ReadHeadAsync(NetworkStream stream)
    {
        var buffer = new List<byte>();
        var chunk = new byte[4096];
        while (true)
        {
            var n = await stream.ReadAsync(chunk);
            if (n == 0)
            {
                throw new IOException("the client closed before sending a request");
            }

            buffer.AddRange(chunk.AsSpan(0, n).ToArray());
            var all = buffer.ToArray();
            var end = all.AsSpan().IndexOf("\r\n\r\n"u8);
            if (end >= 0)
            {
                return (Encoding.ASCII.GetString(all, 0, end), all[(end + 4)..]);
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        await _accepting;
        _channel.Dispose();
        _stop.Dispose();
    }
}
