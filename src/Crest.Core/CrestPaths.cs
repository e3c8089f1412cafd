namespace Crest.Core;

/// <summary>
/// The one place that builds on-disk paths. Every root is configurable so tests and the demo run in
/// temporary directories and never touch a host install.
/// </summary>
public sealed record CrestPaths(string Root, string State, string Socket)
{
    public const string DefaultRoot = "/var/lib/crest";
    public const string DefaultState = "/run/crest";
    public const string DefaultSocket = "/run/crest/crest.sock";
    public const string DefaultConfig = "/etc/crest/config.toml";

    /// <summary>SQLite metadata: pods, containers, images, references.</summary>
    public string Database => Path.Combine(Root, "crest.db");

    /// <summary>Content-addressed blobs by digest.</summary>
    public string Content => Path.Combine(Root, "content");

    /// <summary>Unpacked layers and per-container upper/work directories.</summary>
    public string Snapshots => Path.Combine(Root, "snapshots");

    /// <summary>Per-container bundles and private checkpoint/restore directories.</summary>
    public string Containers => Path.Combine(Root, "containers");

    /// <summary>Removed containers' directories waiting to be deleted in the background (the same filesystem as <see cref="Containers"/>).</summary>
    public string Trash => Path.Combine(Root, "trash");

    /// <summary>Checkpoints unpacked for a restore, and migration archives unpacked on receipt; emptied when crestd starts.</summary>
    public string Restores => Path.Combine(Root, "restores");

    /// <summary>A migration archive unpacked on receipt, until one CreateContainer restores from it.</summary>
    public string ReceivedCheckpoint(string token) => Path.Combine(Restores, ReceivedPrefix + token);

    /// <summary>
    /// Whether <paramref name="path"/> names a checkpoint a migration peer sent this node, unpacked on receipt: exactly
    /// <see cref="Restores"/>/received-TOKEN, nothing a client could point elsewhere with.
    /// </summary>
    public bool IsReceivedCheckpoint(string path) =>
        path.StartsWith(Restores + "/" + ReceivedPrefix, StringComparison.Ordinal)
        && path[(Restores.Length + 1 + ReceivedPrefix.Length)..] is { Length: 24 } token && token.All(char.IsAsciiHexDigitLower);

    private const string ReceivedPrefix = "received-";

    /// <summary>Held with an exclusive lock while a crestd owns the state directory.</summary>
    public string DaemonLock => Path.Combine(State, "crestd.lock");

    /// <summary>Held with an exclusive lock while a crestd owns the persistent root (one crest.db, one writer).</summary>
    public string RootLock => Path.Combine(Root, "crestd.lock");
}
