namespace Crest.Cli;

/// <summary>A CRI endpoint as crictl accepts it: <c>unix:///path</c>, <c>unix://path</c> or a bare absolute path.</summary>
internal sealed record CriEndpoint(string SocketPath)
{
    public const string DefaultEndpoint = "unix:///run/crest/crest.sock";

    public override string ToString() => $"unix://{SocketPath}";

    public static CriEndpoint Parse(string endpoint)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        var text = endpoint.Trim();
        if (text.Length == 0)
        {
            throw new CliUsageException("the runtime endpoint is empty; give one such as unix:///run/crest/crest.sock");
        }

        string path;
        if (text.StartsWith("unix://", StringComparison.Ordinal))
        {
            path = text["unix://".Length..];
        }
        else if (text.Contains("://", StringComparison.Ordinal))
        {
            var scheme = text[..text.IndexOf("://", StringComparison.Ordinal)];
            throw new CliUsageException($"endpoint \"{endpoint}\" uses the {scheme}:// scheme; CRI runtimes listen on unix sockets: use unix:///path/to.sock");
        }
        else
        {
            path = text;
        }

        if (!path.StartsWith('/'))
        {
            throw new CliUsageException($"endpoint \"{endpoint}\" does not name an absolute socket path; use unix:///path/to.sock");
        }

        return new CriEndpoint(path);
    }

    /// <summary>Resolution order as crictl: the flag, then the environment variable, then the default.</summary>
    public static CriEndpoint Resolve(string? flag, string? environment) =>
        Parse(!string.IsNullOrWhiteSpace(flag) ? flag : !string.IsNullOrWhiteSpace(environment) ? environment : DefaultEndpoint);
}

/// <summary>The user asked for something the CLI cannot do as written (exit code 2).</summary>
internal sealed class CliUsageException(string message) : Exception(message)
{
}
