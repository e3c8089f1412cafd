using System.Text.RegularExpressions;

namespace Crest.Core;

/// <summary>
/// An image reference normalised as Docker and containerd do: <c>busybox</c> is
/// <c>docker.io/library/busybox:latest</c>; a first component with a dot, a colon or equal to
/// <c>localhost</c> is a registry host; a digest pins the content and a tag is kept beside it when given.
/// </summary>
public sealed partial record ImageReference(string Registry, string Repository, string? Tag, Digest? Digest)
{
    public const string DockerHub = "docker.io";

    /// <summary>registry/repository, e.g. docker.io/library/busybox.</summary>
    public string Name => $"{Registry}/{Repository}";

    /// <summary>The fully qualified form: name:tag, name@digest or name:tag@digest.</summary>
    public override string ToString() =>
        Name + (Tag is null ? "" : ":" + Tag) + (Digest is { } d ? "@" + d : "");

    /// <summary>name:tag, as crictl lists RepoTags; null for digest-only references.</summary>
    public string? TagReference => Tag is null ? null : $"{Name}:{Tag}";

    /// <summary>The host to contact: Docker Hub's API lives at registry-1.docker.io.</summary>
    public string RegistryHost => Registry == DockerHub ? "registry-1.docker.io" : Registry;

    /// <summary>The name plus a digest: what crictl shows as a RepoDigest.</summary>
    public string WithDigest(Digest digest) => $"{Name}@{digest}";

    public static ImageReference Parse(string text)
    {
        if (!TryParse(text, out var reference, out var error))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"\"{text}\" is not a valid image reference: {error}");
        }

        return reference;
    }

    public static bool TryParse(string? text, out ImageReference reference, out string error)
    {
        reference = null!;
        error = "";
        if (string.IsNullOrWhiteSpace(text))
        {
            error = "it is empty";
            return false;
        }

        if (text.Length > 4096)
        {
            error = "it is longer than 4096 characters";
            return false;
        }

        var rest = text;
        Digest? digest = null;
        var at = rest.IndexOf('@', StringComparison.Ordinal);
        if (at >= 0)
        {
            if (!Core.Digest.TryParse(rest[(at + 1)..], out var d))
            {
                error = $"\"{rest[(at + 1)..]}\" is not a sha256 digest";
                return false;
            }

            digest = d;
            rest = rest[..at];
        }

        string? tag = null;
        var lastSlash = rest.LastIndexOf('/');
        var colon = rest.LastIndexOf(':');
        if (colon > lastSlash)
        {
            tag = rest[(colon + 1)..];
            rest = rest[..colon];
            if (!TagPattern().IsMatch(tag))
            {
                error = $"tag \"{tag}\" must be 1-128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'";
                return false;
            }
        }

        string registry;
        string repository;
        var firstSlash = rest.IndexOf('/');
        var first = firstSlash < 0 ? null : rest[..firstSlash];
        if (first is not null && (first.Contains('.', StringComparison.Ordinal) || first.Contains(':', StringComparison.Ordinal) || first == "localhost"))
        {
            registry = first;
            repository = rest[(firstSlash + 1)..];
            if (!HostPattern().IsMatch(registry))
            {
                error = $"registry \"{registry}\" is not a valid host[:port]";
                return false;
            }
        }
        else
        {
            registry = DockerHub;
            repository = rest;
        }

        if (registry is DockerHub or "index.docker.io")
        {
            registry = DockerHub;
            if (!repository.Contains('/', StringComparison.Ordinal))
            {
                repository = "library/" + repository;
            }
        }

        if (!RepositoryPattern().IsMatch(repository))
        {
            error = $"repository \"{repository}\" must be lowercase path components of letters, digits and separators";
            return false;
        }

        if (tag is null && digest is null)
        {
            tag = "latest";
        }

        reference = new ImageReference(registry, repository, tag, digest);
        return true;
    }

    [GeneratedRegex(@"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]
    private static partial Regex TagPattern();

    [GeneratedRegex(@"^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(:[0-9]{1,5})?$")]
    private static partial Regex HostPattern();

    [GeneratedRegex(@"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$")]
    private static partial Regex RepositoryPattern();
}
