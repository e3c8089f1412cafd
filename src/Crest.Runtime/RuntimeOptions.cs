namespace Crest.Runtime;

/// <summary>An OCI runtime the CRI can select with runtime_handler.</summary>
public sealed record RuntimeHandlerOptions(string Name, string Path)
{
    /// <summary>
    /// The CRIU configuration file the runtime hands CRIU when a container names none (<c>org.criu.config</c>):
    /// <c>/etc/criu/runc.conf</c> for runc, <c>/etc/criu/crun.conf</c> for crun, after the binary's name. Crest's
    /// containers name their own (<see cref="CriuConfigFile"/>), which carries this file's lines first.
    /// </summary>
    public string CriuDefaultConfig { get; init; } = System.IO.Path.Combine("/etc/criu", System.IO.Path.GetFileName(Path) + ".conf");
}

/// <summary>The runtime part of crestd's configuration, as the domain sees it.</summary>
public sealed record RuntimeOptions(
    string DefaultHandler,
    IReadOnlyList<RuntimeHandlerOptions> Handlers,
    CgroupDriver CgroupDriver,
    string ConmonPath);

/// <summary>The CRI cgroup driver (RuntimeConfig RPC).</summary>
public enum CgroupDriver
{
    Cgroupfs,
    Systemd,
}

/// <summary>Where CNI configuration and plugins live.</summary>
public sealed record CniOptions(string ConfDir, IReadOnlyList<string> PluginDirs);
