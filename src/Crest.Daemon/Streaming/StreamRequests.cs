using System.Security.Cryptography;
using Crest.Core;
using Crest.Runtime;

namespace Crest.Daemon.Streaming;

/// <summary>What a streaming URL was handed out for; redeemed once on the streaming server.</summary>
internal abstract record StreamRequest;

internal sealed record ExecStreamRequest(string ContainerId, IReadOnlyList<string> Command, StreamOptions Streams) : StreamRequest;

internal sealed record AttachStreamRequest(string ContainerId, StreamOptions Streams) : StreamRequest;

internal sealed record PortForwardStreamRequest(string SandboxId, IReadOnlyList<int> Ports) : StreamRequest;

/// <summary>
/// The requests behind streaming URLs, by token. A token is 16 random bytes, is good for one connection only and
/// for <see cref="Lifetime"/> (one minute, as the kubelet's and containerd's streaming servers keep them), and at
/// most <see cref="MaxInFlight"/> may wait at once.
/// </summary>
internal sealed class StreamRequestCache(TimeProvider time)
{
    public static readonly TimeSpan Lifetime = TimeSpan.FromMinutes(1);
    public const int MaxInFlight = 1000;

    private readonly Dictionary<string, (StreamRequest Request, DateTimeOffset Expires)> _pending = new(StringComparer.Ordinal);
    private readonly Lock _lock = new();

    public string Insert(StreamRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        var now = time.GetUtcNow();
        lock (_lock)
        {
            foreach (var expired in _pending.Where(p => p.Value.Expires <= now).Select(p => p.Key).ToList())
            {
                _pending.Remove(expired);
            }

            if (_pending.Count >= MaxInFlight)
            {
                throw new CrestException(ErrorKind.ResourceExhausted, $"{MaxInFlight} streaming requests are already waiting for their clients; try again within a minute");
            }

            string token;
            do
            {
                token = Base64UrlToken(RandomNumberGenerator.GetBytes(16));
            }
            while (_pending.ContainsKey(token));

            _pending[token] = (request, now + Lifetime);
            return token;
        }
    }

    /// <summary>The request behind <paramref name="token"/>, removed; null when it is unknown, already used or expired.</summary>
    public StreamRequest? Consume(string token)
    {
        lock (_lock)
        {
            if (!_pending.Remove(token, out var entry))
            {
                return null;
            }

            return entry.Expires > time.GetUtcNow() ? entry.Request : null;
        }
    }

    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _pending.Count;
            }
        }
    }

    private static string Base64UrlToken(byte[] bytes) => Convert.ToBase64String(bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_');
}
