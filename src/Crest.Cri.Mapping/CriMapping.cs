using Crest.Core;
using Google.Protobuf.Collections;
using Runtime.V1;
using CoreNamespaceMode = Crest.Core.NamespaceMode;
using CorePortMapping = Crest.Core.PortMapping;

namespace Crest.Cri.Mapping;

/// <summary>
/// CRI messages to domain records and back; the only place both worlds meet. crestd's adapters and the crest CLI
/// (<c>checkpoint inspect --config</c>) read a container config through the same <see cref="ToDomain(ContainerConfig)"/>.
/// </summary>
public static class CriMapping
{
    public static PodSpec ToDomain(PodSandboxConfig config, string runtimeHandler)
    {
        ArgumentNullException.ThrowIfNull(config);
        var md = config.Metadata ?? throw new CrestException(ErrorKind.InvalidArgument, "sandbox config needs metadata (name, uid, namespace)");
        var linux = config.Linux;
        var ns = linux?.SecurityContext?.NamespaceOptions;
        return new PodSpec
        {
            Name = md.Name,
            Uid = md.Uid,
            Namespace = md.Namespace,
            Attempt = md.Attempt,
            Hostname = config.Hostname,
            LogDirectory = config.LogDirectory,
            Dns = config.DnsConfig is { } dns ? new DnsConfig([.. dns.Servers], [.. dns.Searches], [.. dns.Options]) : null,
            PortMappings = config.PortMappings.Select(p => new CorePortMapping(p.Protocol.ToString().ToUpperInvariant(), p.ContainerPort, p.HostPort, string.IsNullOrEmpty(p.HostIp) ? null : p.HostIp)).ToList(),
            Labels = Map(config.Labels),
            Annotations = Map(config.Annotations),
            CgroupParent = linux?.CgroupParent ?? "",
            Sysctls = linux is null ? new Dictionary<string, string>() : Map(linux.Sysctls),
            Namespaces = ns is null ? new Core.NamespaceOptions() : Namespaces(ns),
            Privileged = linux?.SecurityContext?.Privileged ?? false,
            RuntimeHandler = runtimeHandler,
        };
    }

    /// <summary>CreateContainer's config as the domain's spec; the CRI requires metadata and an image.</summary>
    public static ContainerSpec ToDomain(ContainerConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        var md = config.Metadata ?? throw new CrestException(ErrorKind.InvalidArgument, "container config needs metadata (name)");
        if (string.IsNullOrEmpty(config.Image?.Image))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"container {md.Name} names no image");
        }

        return Spec(config);
    }

    /// <summary>
    /// A container config as a restore request, for <c>crest checkpoint inspect --config</c>: the mapping CreateContainer
    /// uses, without requiring metadata or an image (the restore policy reads neither), so both judge the same request.
    /// </summary>
    public static ContainerSpec ToRestoreRequest(ContainerConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        return Spec(config);
    }

    private static ContainerSpec Spec(ContainerConfig config)
    {
        var linux = config.Linux;
        var sc = linux?.SecurityContext;
        var r = linux?.Resources;
        return new ContainerSpec
        {
            Name = config.Metadata?.Name ?? "",
            Attempt = config.Metadata?.Attempt ?? 0,
            Image = config.Image?.Image ?? "",
            UserSpecifiedImage = string.IsNullOrEmpty(config.Image?.UserSpecifiedImage) ? null : config.Image.UserSpecifiedImage,
            Command = [.. config.Command],
            Args = [.. config.Args],
            WorkingDir = config.WorkingDir,
            Envs = config.Envs.Select(e => new KeyValuePair<string, string>(e.Key, e.Value)).ToList(),
            Mounts = config.Mounts.Select(m => new MountSpec(m.ContainerPath, m.HostPath, m.Readonly, m.Propagation switch
            {
                MountPropagation.PropagationBidirectional => "rshared",
                MountPropagation.PropagationHostToContainer => "rslave",
                _ => "private",
            }, RecursiveReadOnly: m.RecursiveReadOnly)).ToList(),
            Devices = config.Devices.Select(d => new DeviceSpec(d.ContainerPath, d.HostPath, d.Permissions)).ToList(),
            Labels = Map(config.Labels),
            Annotations = Map(config.Annotations),
            LogPath = config.LogPath,
            Stdin = config.Stdin,
            StdinOnce = config.StdinOnce,
            Tty = config.Tty,
            Resources = r is null ? new ResourceSpec() : new ResourceSpec(r.CpuPeriod, r.CpuQuota, r.CpuShares, r.MemoryLimitInBytes, r.CpusetCpus, r.CpusetMems),
            Security = sc is null ? new SecuritySpec() : new SecuritySpec
            {
                Privileged = sc.Privileged,
                AddCapabilities = sc.Capabilities is null ? [] : [.. sc.Capabilities.AddCapabilities],
                DropCapabilities = sc.Capabilities is null ? [] : [.. sc.Capabilities.DropCapabilities],
                RunAsUser = sc.RunAsUser?.Value,
                RunAsGroup = sc.RunAsGroup?.Value,
                RunAsUsername = string.IsNullOrEmpty(sc.RunAsUsername) ? null : sc.RunAsUsername,
                RunAsNonRoot = false,
                SupplementalGroups = [.. sc.SupplementalGroups],
                SupplementalGroupsPolicy = sc.SupplementalGroupsPolicy == global::Runtime.V1.SupplementalGroupsPolicy.Strict
                    ? Core.SupplementalGroupsPolicy.Strict
                    : Core.SupplementalGroupsPolicy.Merge,
                ReadOnlyRootfs = sc.ReadonlyRootfs,
                NoNewPrivileges = sc.NoNewPrivs,
                Seccomp = sc.Seccomp?.ProfileType switch
                {
                    SecurityProfile.Types.ProfileType.RuntimeDefault => SeccompMode.RuntimeDefault,
                    SecurityProfile.Types.ProfileType.Localhost => SeccompMode.Localhost,
                    _ => SeccompMode.Unconfined,
                },
                SeccompLocalhostPath = sc.Seccomp?.LocalhostRef,
                MaskedPaths = sc.MaskedPaths.Count > 0 ? [.. sc.MaskedPaths] : null,
                ReadonlyPaths = sc.ReadonlyPaths.Count > 0 ? [.. sc.ReadonlyPaths] : null,
                Namespaces = sc.NamespaceOptions is null ? new Core.NamespaceOptions() : Namespaces(sc.NamespaceOptions),
            },
        };
    }

    /// <summary>
    /// A recorded container spec back as the CreateContainer config it came from: the inverse of
    /// <see cref="ToDomain(ContainerConfig)"/> for every field that reads. <c>crest restore pod</c> sends it when the
    /// caller gives no container configs.
    /// </summary>
    public static ContainerConfig ToCri(ContainerSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var config = new ContainerConfig
        {
            Metadata = Metadata(spec),
            Image = new ImageSpec { Image = spec.Image, UserSpecifiedImage = spec.UserSpecifiedImage ?? "" },
            WorkingDir = spec.WorkingDir,
            LogPath = spec.LogPath,
            Stdin = spec.Stdin,
            StdinOnce = spec.StdinOnce,
            Tty = spec.Tty,
        };
        config.Command.Add(spec.Command);
        config.Args.Add(spec.Args);
        config.Envs.Add(spec.Envs.Select(e => new KeyValue { Key = e.Key, Value = e.Value }));
        config.Mounts.Add(spec.Mounts.Select(ToCri));
        config.Devices.Add(spec.Devices.Select(d => new Device { ContainerPath = d.ContainerPath, HostPath = d.HostPath, Permissions = d.Permissions }));
        foreach (var (k, v) in spec.Labels)
        {
            config.Labels[k] = v;
        }

        foreach (var (k, v) in spec.Annotations)
        {
            config.Annotations[k] = v;
        }

        var r = spec.Resources;
        var s = spec.Security;
        var sc = new LinuxContainerSecurityContext
        {
            Privileged = s.Privileged,
            Capabilities = new Capability(),
            RunAsUser = s.RunAsUser is { } uid ? new Int64Value { Value = uid } : null,
            RunAsGroup = s.RunAsGroup is { } gid ? new Int64Value { Value = gid } : null,
            RunAsUsername = s.RunAsUsername ?? "",
            SupplementalGroupsPolicy = s.SupplementalGroupsPolicy == Core.SupplementalGroupsPolicy.Strict
                ? global::Runtime.V1.SupplementalGroupsPolicy.Strict
                : global::Runtime.V1.SupplementalGroupsPolicy.Merge,
            ReadonlyRootfs = s.ReadOnlyRootfs,
            NoNewPrivs = s.NoNewPrivileges,
            // No profile reads back as unconfined with no path, as an explicit unconfined one would not.
            Seccomp = s.Seccomp == SeccompMode.Unconfined && s.SeccompLocalhostPath is null ? null : new SecurityProfile
            {
                ProfileType = s.Seccomp switch
                {
                    SeccompMode.RuntimeDefault => SecurityProfile.Types.ProfileType.RuntimeDefault,
                    SeccompMode.Localhost => SecurityProfile.Types.ProfileType.Localhost,
                    _ => SecurityProfile.Types.ProfileType.Unconfined,
                },
                LocalhostRef = s.SeccompLocalhostPath ?? "",
            },
            NamespaceOptions = ToCri(s.Namespaces),
        };
        sc.Capabilities.AddCapabilities.Add(s.AddCapabilities);
        sc.Capabilities.DropCapabilities.Add(s.DropCapabilities);
        sc.SupplementalGroups.Add(s.SupplementalGroups);
        sc.MaskedPaths.Add(s.MaskedPaths ?? []);
        sc.ReadonlyPaths.Add(s.ReadonlyPaths ?? []);
        config.Linux = new LinuxContainerConfig
        {
            Resources = new LinuxContainerResources
            {
                CpuPeriod = r.CpuPeriod,
                CpuQuota = r.CpuQuota,
                CpuShares = r.CpuShares,
                MemoryLimitInBytes = r.MemoryLimitBytes,
                CpusetCpus = r.CpusetCpus,
                CpusetMems = r.CpusetMems,
            },
            SecurityContext = sc,
        };
        return config;
    }

    private static global::Runtime.V1.NamespaceOption ToCri(Core.NamespaceOptions ns) => new()
    {
        Network = (global::Runtime.V1.NamespaceMode)(int)ns.Network,
        Pid = (global::Runtime.V1.NamespaceMode)(int)ns.Pid,
        Ipc = (global::Runtime.V1.NamespaceMode)(int)ns.Ipc,
        TargetId = ns.TargetId ?? "",
        UsernsOptions = ns.User is { } user ? ToCri(user) : null,
    };

    /// <summary>A container's mount as ContainerStatus reports it: what was asked, propagation included.</summary>
    public static Mount ToCri(MountSpec m) => new()
    {
        ContainerPath = m.ContainerPath,
        HostPath = m.HostPath,
        Readonly = m.ReadOnly,
        RecursiveReadOnly = m.RecursiveReadOnly,
        Propagation = m.Propagation switch
        {
            "rshared" => MountPropagation.PropagationBidirectional,
            "rslave" => MountPropagation.PropagationHostToContainer,
            _ => MountPropagation.PropagationPrivate,
        },
    };

    /// <summary>ContainerStatus.user: who the container's processes run as (unset for records made before Crest kept it).</summary>
    public static ContainerUser? ToCri(ProcessUser? user)
    {
        if (user is null)
        {
            return null;
        }

        var linux = new LinuxContainerUser { Uid = user.Uid, Gid = user.Gid };
        linux.SupplementalGroups.Add(user.Groups.Select(g => (long)g));
        return new ContainerUser { Linux = linux };
    }

    public static PodSandboxState ToCri(SandboxState state) => state == SandboxState.Ready ? PodSandboxState.SandboxReady : PodSandboxState.SandboxNotready;

    public static global::Runtime.V1.ContainerState ToCri(Core.ContainerState state) => state switch
    {
        Core.ContainerState.Created => global::Runtime.V1.ContainerState.ContainerCreated,
        Core.ContainerState.Running => global::Runtime.V1.ContainerState.ContainerRunning,
        Core.ContainerState.Exited => global::Runtime.V1.ContainerState.ContainerExited,
        _ => global::Runtime.V1.ContainerState.ContainerUnknown,
    };

    public static long Nanos(DateTimeOffset? t) => t is { } v ? (v.ToUnixTimeMilliseconds() * 1_000_000) + (v.Ticks % TimeSpan.TicksPerMillisecond * 100) : 0;

    public static PodSandboxMetadata Metadata(PodSpec spec) => new() { Name = spec.Name, Uid = spec.Uid, Namespace = spec.Namespace, Attempt = spec.Attempt };

    public static ContainerMetadata Metadata(ContainerSpec spec) => new() { Name = spec.Name, Attempt = spec.Attempt };

    private static Core.NamespaceOptions Namespaces(global::Runtime.V1.NamespaceOption ns) =>
        new((CoreNamespaceMode)(int)ns.Network, (CoreNamespaceMode)(int)ns.Pid, (CoreNamespaceMode)(int)ns.Ipc, string.IsNullOrEmpty(ns.TargetId) ? null : ns.TargetId,
            ns.UsernsOptions is { } userns ? UserNamespace(userns) : null);

    private static UserNamespaceOptions UserNamespace(UserNamespace userns) =>
        new((CoreNamespaceMode)(int)userns.Mode, [.. userns.Uids.Select(IdMappingOf)], [.. userns.Gids.Select(IdMappingOf)]);

    private static IdMapping IdMappingOf(global::Runtime.V1.IDMapping m) => new(m.HostId, m.ContainerId, m.Length);

    public static UserNamespace ToCri(UserNamespaceOptions userns)
    {
        ArgumentNullException.ThrowIfNull(userns);
        var cri = new UserNamespace { Mode = (global::Runtime.V1.NamespaceMode)(int)userns.Mode };
        cri.Uids.Add(userns.Uids.Select(m => new global::Runtime.V1.IDMapping { HostId = m.HostId, ContainerId = m.ContainerId, Length = m.Length }));
        cri.Gids.Add(userns.Gids.Select(m => new global::Runtime.V1.IDMapping { HostId = m.HostId, ContainerId = m.ContainerId, Length = m.Length }));
        return cri;
    }

    private static Dictionary<string, string> Map(MapField<string, string> map) => map.ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);

    public static bool LabelsMatch(IReadOnlyDictionary<string, string> labels, MapField<string, string>? selector) =>
        selector is null || selector.All(kv => labels.TryGetValue(kv.Key, out var v) && v == kv.Value);

    /// <summary>The filter fields ListPodSandbox and ListPodSandboxStats share: ID prefix and labels.</summary>
    public static bool Matches(SandboxRecord s, string? id, MapField<string, string>? labels) =>
        (string.IsNullOrEmpty(id) || s.Id.StartsWith(id, StringComparison.Ordinal)) && LabelsMatch(s.Spec.Labels, labels);

    /// <summary>The filter fields ListContainers and ListContainerStats share: ID prefix, pod ID prefix, labels.</summary>
    public static bool Matches(ContainerRecord c, string? id, string? podId, MapField<string, string>? labels) =>
        (string.IsNullOrEmpty(id) || c.Id.StartsWith(id, StringComparison.Ordinal))
        && (string.IsNullOrEmpty(podId) || c.SandboxId.StartsWith(podId, StringComparison.Ordinal))
        && LabelsMatch(c.Spec.Labels, labels);
}
