using Crest.Core;
using Crest.Runtime;

namespace Crest.Daemon.Config;

/// <summary>crestd's whole configuration (config.toml, then command-line overrides), with the defaults an operator gets.</summary>
public sealed record CrestConfig
{
    public CrestPaths Paths { get; init; } = new(CrestPaths.DefaultRoot, CrestPaths.DefaultState, CrestPaths.DefaultSocket);

    public LogConfig Log { get; init; } = new();

    public RuntimeOptions Runtime { get; init; } = new(
        DefaultHandler: "runc",
        Handlers: [new RuntimeHandlerOptions("runc", "runc"), new RuntimeHandlerOptions("crun", "crun")],
        CgroupDriver: CgroupDriver.Cgroupfs,
        ConmonPath: "conmon");

    public CniOptions Cni { get; init; } = new("/etc/cni/net.d", ["/usr/lib/cni", "/opt/cni/bin"]);

    public CheckpointConfig Checkpoint { get; init; } = new();

    public RestoreConfig Restore { get; init; } = new();

    /// <summary>What a pulled layer may unpack to and the disk it must leave free ([images]).</summary>
    public Crest.Images.ExtractionLimits Images { get; init; } = new();

    public Streaming.StreamingConfig Streaming { get; init; } = new();

    public MetricsConfig Metrics { get; init; } = new();

    public Crest.Images.RegistryOptions Registries { get; init; } = Crest.Images.RegistryOptions.Empty;

    /// <summary>Where this configuration was read from; null when only defaults and flags apply.</summary>
    public string? SourceFile { get; init; }
}

public enum LogFormat
{
    Text,
    Json,
}

public sealed record LogConfig(string Level = "information", LogFormat Format = LogFormat.Text);

public sealed record CheckpointConfig(bool Enabled = true, string CriuPath = "criu", int MinimumCriuVersion = Checkpoint.CriuVersion.Minimum)
{
    /// <summary>Dump established TCP connections (CRIU --tcp-established).</summary>
    public bool TcpEstablished { get; init; }

    /// <summary>The deadline of a CheckpointContainer whose timeout is 0.</summary>
    public long TimeoutSeconds { get; init; } = 300;

    /// <summary>Compression of archives written through CRI: none (what other engines read), gzip or zstd.</summary>
    public string Compression { get; init; } = "none";

    /// <summary>CRIU's images while the container is frozen: auto (a tmpfs when the node has the memory) or never (the disk).</summary>
    public string WorkInMemory { get; init; } = "auto";

    /// <summary>On a node whose /run is not a tmpfs, gather CRIU's kernel facts once and bind them onto /run/criu.kdat (CriuKernelFactsCache).</summary>
    public bool KeepCriuKernelFacts { get; init; } = true;
}

/// <summary>Restore through CreateContainer is off by default, as in containerd >= 2.2.7 and CRI-O's checkpoint_only.</summary>
public sealed record RestoreConfig(bool ViaCreate = false)
{
    /// <summary>Restore established TCP connections (needs checkpoints made with tcp_established).</summary>
    public bool TcpEstablished { get; init; }

    /// <summary>What a checkpoint may expand to; its defaults are the format's own (<see cref="Checkpoint.Format.RestoreLimits"/>).</summary>
    public Checkpoint.Format.RestoreLimits Limits { get; init; } = new();

    /// <summary>Restore policy checks reported but not enforced: capabilities, users, seccomp, namespaces, mounts, devices.</summary>
    public IReadOnlyList<string> RelaxedChecks { get; init; } = [];

    /// <summary>A plain archive's page images are read where the archive holds them (an erofs index mounted over it), not written out first.</summary>
    public bool PagesInPlace { get; init; } = true;

    /// <summary>Page images under this many bytes in all are written out anyway (the copy costs less than the mount).</summary>
    public long PagesInPlaceMinBytes { get; init; } = 32L << 20;
}

/// <summary>The Prometheus endpoint: off when <paramref name="Address"/> is empty, as containerd's is by default.</summary>
public sealed record MetricsConfig(string Address = "")
{
    public System.Net.IPEndPoint? Endpoint => Address.Length == 0 ? null : System.Net.IPEndPoint.Parse(Address);
}
