using System.Net;

namespace Crest.Images;

/// <summary>What the operator configured for one registry host (config.toml [registries."host"]).</summary>
public sealed record RegistryHostOptions
{
    /// <summary>Talk plain HTTP to this host (loopback hosts always do, as Docker does).</summary>
    public bool PlainHttp { get; init; }

    public string? Username { get; init; }

    public string? Password { get; init; }

    /// <summary>Base URLs (scheme://host[:port]) tried in order before the registry itself, for pulls.</summary>
    public IReadOnlyList<Uri> Mirrors { get; init; } = [];
}

public sealed record RegistryOptions(IReadOnlyDictionary<string, RegistryHostOptions> Hosts)
{
    public static RegistryOptions Empty { get; } = new(new Dictionary<string, RegistryHostOptions>());

    public RegistryHostOptions For(string registry) => Hosts.TryGetValue(registry, out var o) ? o : new RegistryHostOptions();

    /// <summary>Loopback registries are reached over plain HTTP without configuration, as Docker does.</summary>
    public static bool IsLoopback(string hostAndPort)
    {
        var host = hostAndPort;
        if (host.StartsWith('['))
        {
            host = host[1..host.IndexOf(']', StringComparison.Ordinal)];
        }
        else if (host.Count(c => c == ':') == 1)
        {
            host = host[..host.IndexOf(':', StringComparison.Ordinal)];
        }

        return host == "localhost" || (IPAddress.TryParse(host, out var ip) && IPAddress.IsLoopback(ip));
    }
}

/// <summary>Credentials for one pull or push, from the CRI AuthConfig or from config.toml.</summary>
public sealed record RegistryCredentials(string? Username = null, string? Password = null, string? IdentityToken = null, string? RegistryToken = null)
{
    public bool HasUserPassword => !string.IsNullOrEmpty(Username);
}
