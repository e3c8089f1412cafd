using System.Collections.Concurrent;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;

namespace Crest.TestKit;

/// <summary>
/// A registry served from an OCI layout by HttpListener on 127.0.0.1, for behaviours the real registry
/// cannot be made to show on demand: a Bearer token service, a connection cut mid-blob, request counting.
/// </summary>
public sealed class FakeRegistry : IDisposable
{
    private readonly HttpListener _listener;
    private readonly string _layout;
    private readonly string _repository;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;

    public FakeRegistry(string layoutDir, string repository)
    {
        _layout = layoutDir;
        _repository = repository;
        // A free port can be taken by a parallel test between the probe and the bind: try a few.
        for (var attempt = 1; ; attempt++)
        {
            Port = LocalRegistry.FreePort();
            _listener = new HttpListener();
            _listener.Prefixes.Add($"http://127.0.0.1:{Port}/");
            try
            {
                _listener.Start();
                break;
            }
            catch (HttpListenerException) when (attempt < 10)
            {
                _listener.Close();
            }
        }

        _loop = Task.Run(LoopAsync);
    }

    public int Port { get; }

    public string Host => $"127.0.0.1:{Port}";

    /// <summary>When set, every /v2 request needs a Bearer token that the token service gives for these credentials.</summary>
    public (string User, string Password)? BearerCredentials { get; set; }

    /// <summary>A blob whose transfer is cut after this many bytes.</summary>
    public (string Digest, int Bytes)? CutBlob { get; set; }

    /// <summary>Requests served, by path.</summary>
    public ConcurrentDictionary<string, int> Requests { get; } = new(StringComparer.Ordinal);

    /// <summary>Delay before answering blob requests, so concurrent pulls overlap.</summary>
    public TimeSpan BlobDelay { get; set; }

    private const string Token = "crest-test-token";

    private async Task LoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            HttpListenerContext context;
            try
            {
                context = await _listener.GetContextAsync();
            }
            catch (Exception) when (_stop.IsCancellationRequested)
            {
                return;
            }
            catch (HttpListenerException)
            {
                return;
            }

            _ = Task.Run(() => ServeAsync(context));
        }
    }

    private async Task ServeAsync(HttpListenerContext context)
    {
        var path = context.Request.Url!.AbsolutePath;
        Requests.AddOrUpdate(path, 1, (_, n) => n + 1);
        var response = context.Response;
        try
        {
            if (path == "/token")
            {
                var auth = context.Request.Headers["Authorization"];
                var expected = BearerCredentials is { } c ? "Basic " + Convert.ToBase64String(Encoding.UTF8.GetBytes($"{c.User}:{c.Password}")) : null;
                if (auth != expected)
                {
                    response.StatusCode = 401;
                    response.Close();
                    return;
                }

                await WriteAsync(response, 200, "application/json", Encoding.UTF8.GetBytes($$"""{"token":"{{Token}}"}"""));
                return;
            }

            if (BearerCredentials is not null && context.Request.Headers["Authorization"] != "Bearer " + Token)
            {
                response.AddHeader("WWW-Authenticate", $"Bearer realm=\"http://{Host}/token\",service=\"fake\",scope=\"repository:{_repository}:pull\"");
                await WriteAsync(response, 401, "application/json", """{"errors":[{"code":"UNAUTHORIZED"}]}"""u8.ToArray());
                return;
            }

            if (path == "/v2/")
            {
                await WriteAsync(response, 200, "application/json", "{}"u8.ToArray());
                return;
            }

            var prefix = $"/v2/{_repository}/";
            if (!path.StartsWith(prefix, StringComparison.Ordinal))
            {
                await WriteAsync(response, 404, "application/json", """{"errors":[{"code":"NAME_UNKNOWN"}]}"""u8.ToArray());
                return;
            }

            var rest = path[prefix.Length..];
            if (rest.StartsWith("manifests/", StringComparison.Ordinal))
            {
                var reference = rest["manifests/".Length..];
                var digest = reference.StartsWith("sha256:", StringComparison.Ordinal) ? reference : ManifestForTag(reference);
                if (digest is null || !File.Exists(BlobPath(digest)))
                {
                    await WriteAsync(response, 404, "application/json", """{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"""u8.ToArray());
                    return;
                }

                var bytes = await File.ReadAllBytesAsync(BlobPath(digest));
                var mediaType = (string?)JsonNode.Parse(bytes)!["mediaType"] ?? "application/vnd.oci.image.manifest.v1+json";
                response.AddHeader("Docker-Content-Digest", digest);
                await WriteAsync(response, 200, mediaType, bytes);
                return;
            }

            if (rest.StartsWith("blobs/", StringComparison.Ordinal))
            {
                var digest = rest["blobs/".Length..];
                if (!File.Exists(BlobPath(digest)))
                {
                    await WriteAsync(response, 404, "application/json", """{"errors":[{"code":"BLOB_UNKNOWN"}]}"""u8.ToArray());
                    return;
                }

                if (BlobDelay > TimeSpan.Zero)
                {
                    // The behaviour under test, not a wait: a slow registry, so concurrent pulls overlap.
                    await Task.Delay(BlobDelay);
                }

                var bytes = await File.ReadAllBytesAsync(BlobPath(digest));
                if (CutBlob is { } cut && cut.Digest == digest)
                {
                    response.StatusCode = 200;
                    response.ContentType = "application/octet-stream";
                    response.ContentLength64 = bytes.Length;
                    await response.OutputStream.WriteAsync(bytes.AsMemory(0, Math.Min(cut.Bytes, bytes.Length)));
                    await response.OutputStream.FlushAsync();
                    response.Abort();
                    return;
                }

                await WriteAsync(response, 200, "application/octet-stream", bytes);
                return;
            }

            await WriteAsync(response, 404, "text/plain", []);
        }
        catch (HttpListenerException)
        {
        }
        catch (ObjectDisposedException)
        {
        }
    }

    private string? ManifestForTag(string tag)
    {
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(_layout, "index.json")))!;
        return index["manifests"]!.AsArray()
            .FirstOrDefault(m => (string?)m!["annotations"]?["org.opencontainers.image.ref.name"] == tag)?["digest"]?.GetValue<string>();
    }

    private string BlobPath(string digest) => Path.Combine(_layout, "blobs", "sha256", digest.Replace("sha256:", "", StringComparison.Ordinal));

    private static async Task WriteAsync(HttpListenerResponse response, int status, string contentType, byte[] body)
    {
        response.StatusCode = status;
        response.ContentType = contentType;
        response.ContentLength64 = body.Length;
        await response.OutputStream.WriteAsync(body);
        response.Close();
    }

    public void Dispose()
    {
        _stop.Cancel();
        try
        {
            _listener.Stop();
            _listener.Close();
        }
        catch (HttpListenerException)
        {
            // Closing can race another listener on a recycled port; the test's own assertions are what count.
        }

        try
        {
            _loop.Wait(TimeSpan.FromSeconds(5));
        }
        catch (AggregateException)
        {
        }

        _stop.Dispose();
    }
}
