namespace Crest.Runtime;

/// <summary>An OCI runtime the CRI can select with runtime_handler.</summary>
public sealed record RuntimeHandlerOptions(string Name, string Path);

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
