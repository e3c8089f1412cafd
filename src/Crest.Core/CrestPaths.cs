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

    /// <summary>Held with an exclusive lock while a crestd owns the state directory.</summary>
    public string DaemonLock => Path.Combine(State, "crestd.lock");

    /// <summary>Held with an exclusive lock while a crestd owns the persistent root (one crest.db, one writer).</summary>
    public string RootLock => Path.Combine(Root, "crestd.lock");
}
