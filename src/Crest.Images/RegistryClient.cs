using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Crest.Core;
using Crest.Oci;

namespace Crest.Images;

/// <summary>A manifest or index as a registry served it.</summary>
public sealed record FetchedManifest(byte[] Content, string MediaType, Digest Digest);

/// <summary>The OCI distribution API as Crest uses it: manifests and blobs, pulled and pushed.</summary>
public interface IRegistryClient
{
    Task<FetchedManifest> GetManifestAsync(ImageReference image, string reference, RegistryCredentials? credentials, CancellationToken ct);

    Task<Stream> GetBlobAsync(ImageReference image, Digest digest, RegistryCredentials? credentials, CancellationToken ct);

    Task<bool> BlobExistsAsync(ImageReference image, Digest digest, RegistryCredentials? credentials, CancellationToken ct);

    Task PushBlobAsync(ImageReference image, Digest digest, long size, Func<Stream> open, RegistryCredentials? credentials, CancellationToken ct);

    Task PushManifestAsync(ImageReference image, string reference, byte[] content, string mediaType, RegistryCredentials? credentials, CancellationToken ct);
}

/// <summary>
/// HTTP client for registries: plain HTTP for loopback and configured hosts, mirrors first for pulls,
/// Basic and Bearer (token service) authentication from the challenge the registry sends, bounded retries
/// on transient failures. Errors name the registry, the object and what to do.
/// </summary>
public sealed class RegistryClient(RegistryOptions options, HttpClient http) : IRegistryClient
{
    private const int Attempts = 3;
    private readonly ConcurrentDictionary<(string Host, string Scope), AuthenticationHeaderValue> _tokens = new();

    public async Task<FetchedManifest> GetManifestAsync(ImageReference image, string reference, RegistryCredentials? credentials, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(image);
        using var response = await SendAsync(image, HttpMethod.Get, $"manifests/{reference}", credentials, pull: true, ct,
            accept: MediaTypes.ManifestAccept).ConfigureAwait(false);
        if (response.StatusCode == HttpStatusCode.NotFound)
        {
            throw new CrestException(ErrorKind.NotFound, $"image {image.Name}:{reference} was not found in registry {image.Registry} (no such tag, digest or repository)");
        }

        await EnsureSuccessAsync(response, image, $"manifest {reference}", ct).ConfigureAwait(false);
        if (response.Content.Headers.ContentLength > 4 * 1024 * 1024)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"registry {image.Registry} sent a manifest for {image.Name}:{reference} larger than 4 MiB; refusing it");
        }

        var content = await response.Content.ReadAsByteArrayAsync(ct).ConfigureAwait(false);
        var digest = Digest.Of(content);
        if (Digest.TryParse(reference, out var asked) && asked != digest)
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"registry {image.Registry} answered {image.Name}@{asked} with a manifest whose digest is {digest}; refusing it");
        }

        var mediaType = response.Content.Headers.ContentType?.MediaType;
        if (string.IsNullOrEmpty(mediaType) || mediaType is "application/json" or "text/plain")
        {
            mediaType = ProbeMediaType(content);
        }

        return new FetchedManifest(content, mediaType, digest);
    }

    public async Task<Stream> GetBlobAsync(ImageReference image, Digest digest, RegistryCredentials? credentials, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(image);
        var response = await SendAsync(image, HttpMethod.Get, $"blobs/{digest}", credentials, pull: true, ct).ConfigureAwait(false);
        try
        {
            if (response.StatusCode == HttpStatusCode.NotFound)
            {
                throw new CrestException(ErrorKind.NotFound, $"blob {digest} of {image.Name} is missing from registry {image.Registry}");
            }

            await EnsureSuccessAsync(response, image, $"blob {digest}", ct).ConfigureAwait(false);
            var stream = await response.Content.ReadAsStreamAsync(ct).ConfigureAwait(false);
            return new OwningStream(stream, response);
        }
        catch
        {
            response.Dispose();
            throw;
        }
    }

    public async Task<bool> BlobExistsAsync(ImageReference image, Digest digest, RegistryCredentials? credentials, CancellationToken ct)
    {
        using var response = await SendAsync(image, HttpMethod.Head, $"blobs/{digest}", credentials, pull: false, ct).ConfigureAwait(false);
        if (response.StatusCode == HttpStatusCode.NotFound)
        {
            return false;
        }

        await EnsureSuccessAsync(response, image, $"blob {digest}", ct).ConfigureAwait(false);
        return true;
    }

    public async Task PushBlobAsync(ImageReference image, Digest digest, long size, Func<Stream> open, RegistryCredentials? credentials, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(open);
        if (await BlobExistsAsync(image, digest, credentials, ct).ConfigureAwait(false))
        {
            return;
        }

        using var start = await SendAsync(image, HttpMethod.Post, "blobs/uploads/", credentials, pull: false, ct).ConfigureAwait(false);
        await EnsureSuccessAsync(start, image, "blob upload", ct).ConfigureAwait(false);
        var location = start.Headers.Location ?? throw new CrestException(ErrorKind.Unavailable, $"registry {image.Registry} started an upload without a Location");
        var baseUri = start.RequestMessage!.RequestUri!;
        var upload = location.IsAbsoluteUri ? location : new Uri(baseUri, location);
        var separator = upload.Query.Length > 0 ? "&" : "?";
        var put = new Uri(upload + separator + "digest=" + Uri.EscapeDataString(digest.ToString()));
        using var response = await SendToAsync(image, image.Repository, put, HttpMethod.Put, credentials, pull: false, ct, content: () =>
        {
            var c = new StreamContent(open());
            c.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
            c.Headers.ContentLength = size;
            return c;
        }).ConfigureAwait(false);
        await EnsureSuccessAsync(response, image, $"blob {digest} upload", ct).ConfigureAwait(false);
    }

    public async Task PushManifestAsync(ImageReference image, string reference, byte[] content, string mediaType, RegistryCredentials? credentials, CancellationToken ct)
    {
        using var response = await SendAsync(image, HttpMethod.Put, $"manifests/{reference}", credentials, pull: false, ct, content: () =>
        {
            var c = new ByteArrayContent(content);
            c.Headers.ContentType = new MediaTypeHeaderValue(mediaType);
            return c;
        }).ConfigureAwait(false);
        await EnsureSuccessAsync(response, image, $"manifest {reference} upload", ct).ConfigureAwait(false);
    }

    /// <summary>Tells an index from a manifest when the registry's Content-Type does not.</summary>
    public static string ProbeMediaType(byte[] content)
    {
        try
        {
            var probe = JsonSerializer.Deserialize(content, OciJson.Default.ManifestProbe);
            if (probe?.MediaType is { Length: > 0 } mt)
            {
                return mt;
            }

            return probe?.Manifests is not null ? MediaTypes.OciIndex : MediaTypes.OciManifest;
        }
        catch (JsonException e)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"the manifest is not valid JSON: {e.Message}", e);
        }
    }

    private IEnumerable<Uri> Endpoints(ImageReference image, bool pull)
    {
        var host = options.For(image.Registry);
        if (pull)
        {
            foreach (var mirror in host.Mirrors)
            {
                yield return mirror;
            }
        }

        var scheme = host.PlainHttp || RegistryOptions.IsLoopback(image.Registry) ? "http" : "https";
        yield return new Uri($"{scheme}://{image.RegistryHost}");
    }

    private async Task<HttpResponseMessage> SendAsync(ImageReference image, HttpMethod method, string path, RegistryCredentials? credentials,
        bool pull, CancellationToken ct, string[]? accept = null, Func<HttpContent>? content = null)
    {
        Exception? last = null;
        HttpResponseMessage? lastResponse = null;
        foreach (var endpoint in Endpoints(image, pull))
        {
            var repository = RepositoryAt(endpoint, image);
            var uri = new Uri(endpoint, $"/v2/{repository}/{path}");
            try
            {
                lastResponse?.Dispose();
                lastResponse = await SendToAsync(image, repository, uri, method, credentials, pull, ct, accept, content).ConfigureAwait(false);
                // A mirror that lacks the content is skipped; the registry's own answer is final.
                if (lastResponse.StatusCode == HttpStatusCode.NotFound && endpoint.Host != image.RegistryHost)
                {
                    continue;
                }

                return lastResponse;
            }
            catch (CrestException e) when (e.Kind == ErrorKind.Unavailable)
            {
                last = e;
            }
        }

        return lastResponse ?? throw (last ?? new CrestException(ErrorKind.Unavailable, $"registry {image.Registry} has no endpoint"));
    }

    /// <summary>
    /// The repository's name at an endpoint: a mirror's URL path is a namespace in front of it
    /// (mirror http://m:5000/hub serves docker.io/library/busybox as hub/library/busybox), as in containers-registries.conf.
    /// </summary>
    internal static string RepositoryAt(Uri endpoint, ImageReference image)
    {
        var prefix = endpoint.AbsolutePath.Trim('/');
        return prefix.Length == 0 ? image.Repository : $"{prefix}/{image.Repository}";
    }

    private async Task<HttpResponseMessage> SendToAsync(ImageReference image, string repository, Uri uri, HttpMethod method, RegistryCredentials? credentials,
        bool pull, CancellationToken ct, string[]? accept = null, Func<HttpContent>? content = null)
    {
        var scope = $"repository:{repository}:{(pull ? "pull" : "pull,push")}";
        var creds = credentials ?? ConfiguredCredentials(image);
        for (var attempt = 1; ; attempt++)
        {
            HttpResponseMessage response;
            try
            {
                using var request = NewRequest(method, uri, accept, content);
                if (_tokens.TryGetValue((uri.Authority, scope), out var cached))
                {
                    request.Headers.Authorization = cached;
                }

                response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct).ConfigureAwait(false);
                if (response.StatusCode == HttpStatusCode.Unauthorized)
                {
                    var header = await AuthorizeAsync(image, uri, response, creds, scope, ct).ConfigureAwait(false);
                    if (header is not null)
                    {
                        response.Dispose();
                        using var retry = NewRequest(method, uri, accept, content);
                        retry.Headers.Authorization = header;
                        response = await http.SendAsync(retry, HttpCompletionOption.ResponseHeadersRead, ct).ConfigureAwait(false);
                    }
                }
            }
            catch (HttpRequestException e) when (attempt < Attempts)
            {
                await Task.Delay(Backoff(attempt), ct).ConfigureAwait(false);
                _ = e;
                continue;
            }
            catch (HttpRequestException e)
            {
                throw new CrestException(ErrorKind.Unavailable, $"registry {image.Registry} at {uri.GetLeftPart(UriPartial.Authority)} is unreachable after {Attempts} attempts: {e.Message}", e);
            }

            var transient = (int)response.StatusCode >= 500 || response.StatusCode == HttpStatusCode.TooManyRequests;
            if (transient && attempt < Attempts)
            {
                response.Dispose();
                await Task.Delay(Backoff(attempt), ct).ConfigureAwait(false);
                continue;
            }

            return response;
        }
    }

    private static HttpRequestMessage NewRequest(HttpMethod method, Uri uri, string[]? accept, Func<HttpContent>? content)
    {
        var request = new HttpRequestMessage(method, uri);
        foreach (var a in accept ?? [])
        {
            request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue(a));
        }

        if (content is not null)
        {
            request.Content = content();
        }

        return request;
    }

    private static TimeSpan Backoff(int attempt) => TimeSpan.FromMilliseconds(200 * (1 << (attempt - 1)));

    private RegistryCredentials? ConfiguredCredentials(ImageReference image)
    {
        var host = options.For(image.Registry);
        return host.Username is null ? null : new RegistryCredentials(host.Username, host.Password);
    }

    /// <summary>Answers a 401 challenge: Basic with the credentials, or a token from the Bearer realm.</summary>
    private async Task<AuthenticationHeaderValue?> AuthorizeAsync(ImageReference image, Uri uri, HttpResponseMessage challenge,
        RegistryCredentials? creds, string scope, CancellationToken ct)
    {
        foreach (var c in challenge.Headers.WwwAuthenticate)
        {
            if (c.Scheme.Equals("Basic", StringComparison.OrdinalIgnoreCase))
            {
                if (creds is not { HasUserPassword: true })
                {
                    throw Denied(image, "it requires a username and password and none were given (set them in the pull's auth or in config.toml [registries])");
                }

                var header = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{creds.Username}:{creds.Password}")));
                _tokens[(uri.Authority, scope)] = header;
                return header;
            }

            if (c.Scheme.Equals("Bearer", StringComparison.OrdinalIgnoreCase))
            {
                if (!string.IsNullOrEmpty(creds?.RegistryToken))
                {
                    return new AuthenticationHeaderValue("Bearer", creds.RegistryToken);
                }

                var parameters = ParseChallenge(c.Parameter ?? "");
                if (!parameters.TryGetValue("realm", out var realm) || !Uri.TryCreate(realm, UriKind.Absolute, out var realmUri))
                {
                    throw Denied(image, "its Bearer challenge names no token realm");
                }

                var token = await FetchTokenAsync(image, realmUri, parameters.GetValueOrDefault("service"), parameters.GetValueOrDefault("scope") ?? scope, creds, ct).ConfigureAwait(false);
                var header = new AuthenticationHeaderValue("Bearer", token);
                _tokens[(uri.Authority, scope)] = header;
                return header;
            }
        }

        return null;
    }

    private async Task<string> FetchTokenAsync(ImageReference image, Uri realm, string? service, string scope, RegistryCredentials? creds, CancellationToken ct)
    {
        HttpRequestMessage request;
        if (!string.IsNullOrEmpty(creds?.IdentityToken))
        {
            // An identity token is an OAuth2 refresh token (docker login's stored form).
            request = new HttpRequestMessage(HttpMethod.Post, realm)
            {
                Content = new FormUrlEncodedContent(new Dictionary<string, string>
                {
                    ["grant_type"] = "refresh_token",
                    ["refresh_token"] = creds.IdentityToken,
                    ["service"] = service ?? "",
                    ["scope"] = scope,
                    ["client_id"] = "crest",
                }),
            };
        }
        else
        {
            var query = $"scope={Uri.EscapeDataString(scope)}" + (service is null ? "" : $"&service={Uri.EscapeDataString(service)}");
            var builder = new UriBuilder(realm) { Query = string.IsNullOrEmpty(realm.Query) ? query : realm.Query.TrimStart('?') + "&" + query };
            request = new HttpRequestMessage(HttpMethod.Get, builder.Uri);
            if (creds is { HasUserPassword: true })
            {
                request.Headers.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{creds.Username}:{creds.Password}")));
            }
        }

        using (request)
        {
            HttpResponseMessage response;
            try
            {
                response = await http.SendAsync(request, ct).ConfigureAwait(false);
            }
            catch (HttpRequestException e)
            {
                throw new CrestException(ErrorKind.Unavailable, $"the token service {realm.GetLeftPart(UriPartial.Path)} of registry {image.Registry} is unreachable: {e.Message}", e);
            }

            using (response)
            {
                if (!response.IsSuccessStatusCode)
                {
                    throw Denied(image, $"its token service {realm.GetLeftPart(UriPartial.Path)} answered {(int)response.StatusCode} {response.ReasonPhrase} for scope {scope}; check the credentials");
                }

                using var doc = JsonDocument.Parse(await response.Content.ReadAsByteArrayAsync(ct).ConfigureAwait(false));
                foreach (var name in new[] { "token", "access_token" })
                {
                    if (doc.RootElement.TryGetProperty(name, out var t) && t.GetString() is { Length: > 0 } token)
                    {
                        return token;
                    }
                }

                throw Denied(image, $"its token service {realm.GetLeftPart(UriPartial.Path)} returned no token");
            }
        }
    }

    internal static Dictionary<string, string> ParseChallenge(string parameter)
    {
        var result = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        var i = 0;
        while (i < parameter.Length)
        {
            while (i < parameter.Length && (parameter[i] == ',' || char.IsWhiteSpace(parameter[i])))
            {
                i++;
            }

            var eq = parameter.IndexOf('=', i);
            if (eq < 0)
            {
                break;
            }

            var key = parameter[i..eq].Trim();
            i = eq + 1;
            string value;
            if (i < parameter.Length && parameter[i] == '"')
            {
                var end = parameter.IndexOf('"', i + 1);
                end = end < 0 ? parameter.Length : end;
                value = parameter[(i + 1)..end];
                i = end + 1;
            }
            else
            {
                var end = parameter.IndexOf(',', i);
                end = end < 0 ? parameter.Length : end;
                value = parameter[i..end].Trim();
                i = end;
            }

            result[key] = value;
        }

        return result;
    }

    private static CrestException Denied(ImageReference image, string why) =>
        new(ErrorKind.PermissionDenied, $"registry {image.Registry} refused access to {image.Name}: {why}");

    private static async Task EnsureSuccessAsync(HttpResponseMessage response, ImageReference image, string what, CancellationToken ct)
    {
        if (response.IsSuccessStatusCode)
        {
            return;
        }

        var body = "";
        try
        {
            body = (await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false)).Trim();
            body = body.Length > 300 ? body[..300] : body;
        }
        catch (HttpRequestException)
        {
        }

        var kind = response.StatusCode switch
        {
            HttpStatusCode.Unauthorized or HttpStatusCode.Forbidden => ErrorKind.PermissionDenied,
            HttpStatusCode.NotFound => ErrorKind.NotFound,
            HttpStatusCode.TooManyRequests => ErrorKind.ResourceExhausted,
            >= HttpStatusCode.InternalServerError => ErrorKind.Unavailable,
            _ => ErrorKind.FailedPrecondition,
        };
        var hint = kind == ErrorKind.PermissionDenied ? "; check the credentials" : "";
        throw new CrestException(kind, $"registry {image.Registry} answered {(int)response.StatusCode} {response.ReasonPhrase} for {what} of {image.Name}{hint}: {body}");
    }

    /// <summary>A response body that disposes its response with it.</summary>
    private sealed class OwningStream(Stream inner, HttpResponseMessage response) : ReadOnlyStream
    {
        public override int Read(Span<byte> buffer) => inner.Read(buffer);

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(buffer, cancellationToken);

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                inner.Dispose();
                response.Dispose();
            }

            base.Dispose(disposing);
        }
    }
}
