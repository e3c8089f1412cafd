using System.Text.Json;
using Crest.Core;
using Crest.Cri.Mapping;
using Runtime.V1;

namespace Crest.UnitTests;

/// <summary>
/// The one CRI-to-domain mapping, which crestd's CreateContainer and <c>crest checkpoint inspect --config</c> both use:
/// a field the mapping drops is one a restore would be judged without.
/// </summary>
public class CriMappingTests
{
    private static ContainerConfig RichConfig()
    {
        var config = new ContainerConfig
        {
            Metadata = new ContainerMetadata { Name = "counter", Attempt = 2 },
            Image = new ImageSpec { Image = "/var/lib/checkpoints/counter.tar", UserSpecifiedImage = "counter-checkpoint" },
            WorkingDir = "/work",
            LogPath = "counter.log",
            Stdin = true,
            Tty = true,
            Linux = new LinuxContainerConfig
            {
                Resources = new LinuxContainerResources { CpuQuota = 50_000, CpuPeriod = 100_000, MemoryLimitInBytes = 64 << 20, CpusetCpus = "0" },
                SecurityContext = new LinuxContainerSecurityContext
                {
                    Capabilities = new Capability(),
                    RunAsUser = new Int64Value { Value = 1000 },
                    RunAsGroup = new Int64Value { Value = 2000 },
                    RunAsUsername = "app",
                    NoNewPrivs = true,
                    ReadonlyRootfs = true,
                    SupplementalGroupsPolicy = global::Runtime.V1.SupplementalGroupsPolicy.Strict,
                    Seccomp = new SecurityProfile { ProfileType = SecurityProfile.Types.ProfileType.Localhost, LocalhostRef = "/etc/crest/seccomp.json" },
                    NamespaceOptions = new NamespaceOption
                    {
                        Network = global::Runtime.V1.NamespaceMode.Node,
                        Pid = global::Runtime.V1.NamespaceMode.Target,
                        Ipc = global::Runtime.V1.NamespaceMode.Pod,
                        TargetId = "0123abcd",
                        UsernsOptions = new UserNamespace
                        {
                            Mode = global::Runtime.V1.NamespaceMode.Pod,
                            Uids = { new global::Runtime.V1.IDMapping { HostId = 100_000, ContainerId = 0, Length = 65_536 } },
                            Gids = { new global::Runtime.V1.IDMapping { HostId = 200_000, ContainerId = 0, Length = 65_536 } },
                        },
                    },
                },
            },
        };
        config.Command.Add("/bin/sh");
        config.Args.Add("-c");
        config.Envs.Add(new KeyValue { Key = "COUNT_FROM", Value = "7" });
        config.Labels["app"] = "counter";
        config.Annotations["io.kubernetes.pod.name"] = "counter-0";
        config.Mounts.Add(new Mount { ContainerPath = "/data", HostPath = "/srv/data", Readonly = true, RecursiveReadOnly = true });
        config.Mounts.Add(new Mount { ContainerPath = "/shared", HostPath = "/srv/shared", Propagation = MountPropagation.PropagationBidirectional });
        config.Mounts.Add(new Mount { ContainerPath = "/seen", HostPath = "/srv/seen", Propagation = MountPropagation.PropagationHostToContainer });
        config.Devices.Add(new Device { ContainerPath = "/dev/fuse", HostPath = "/dev/fuse", Permissions = "rwm" });
        var sc = config.Linux.SecurityContext;
        sc.Capabilities.AddCapabilities.Add("CAP_NET_ADMIN");
        sc.Capabilities.DropCapabilities.Add("CAP_KILL");
        sc.SupplementalGroups.Add(3000);
        sc.MaskedPaths.Add("/proc/kcore");
        sc.ReadonlyPaths.Add("/proc/sys");
        return config;
    }

    [Fact]
    public void A_container_config_reaches_the_domain_with_its_namespaces_user_and_privilege_settings()
    {
        var spec = CriMapping.ToDomain(RichConfig());

        var security = spec.Security;
        Assert.Equal("app", security.RunAsUsername);
        Assert.Equal(1000, security.RunAsUser);
        Assert.Equal(2000, security.RunAsGroup);
        Assert.True(security.NoNewPrivileges);
        Assert.True(security.ReadOnlyRootfs);
        Assert.Equal(Core.SupplementalGroupsPolicy.Strict, security.SupplementalGroupsPolicy);
        Assert.Equal([3000L], security.SupplementalGroups);
        Assert.Equal(["CAP_NET_ADMIN"], security.AddCapabilities);
        Assert.Equal(["CAP_KILL"], security.DropCapabilities);
        Assert.Equal(SeccompMode.Localhost, security.Seccomp);
        Assert.Equal("/etc/crest/seccomp.json", security.SeccompLocalhostPath);
        Assert.Equal(["/proc/kcore"], security.MaskedPaths);
        Assert.Equal(["/proc/sys"], security.ReadonlyPaths);
        Assert.Equal(Core.NamespaceMode.Node, security.Namespaces.Network);
        Assert.Equal(Core.NamespaceMode.Target, security.Namespaces.Pid);
        Assert.Equal(Core.NamespaceMode.Pod, security.Namespaces.Ipc);
        Assert.Equal("0123abcd", security.Namespaces.TargetId);
        Assert.True(security.Namespaces.HasPodUserNamespace);
        Assert.Equal(new IdMapping(100_000, 0, 65_536), Assert.Single(security.Namespaces.User!.Uids));
        Assert.Equal(new IdMapping(200_000, 0, 65_536), Assert.Single(security.Namespaces.User!.Gids));
    }

    [Fact]
    public void A_container_config_reaches_the_domain_with_its_mounts_devices_and_process()
    {
        var spec = CriMapping.ToDomain(RichConfig());

        Assert.Equal("counter", spec.Name);
        Assert.Equal(2u, spec.Attempt);
        Assert.Equal("/var/lib/checkpoints/counter.tar", spec.Image);
        Assert.Equal("counter-checkpoint", spec.UserSpecifiedImage);
        Assert.Equal(["/bin/sh"], spec.Command);
        Assert.Equal(["-c"], spec.Args);
        Assert.Equal("/work", spec.WorkingDir);
        Assert.Equal([new KeyValuePair<string, string>("COUNT_FROM", "7")], spec.Envs);
        Assert.Equal(
            [
                new MountSpec("/data", "/srv/data", ReadOnly: true, "private", RecursiveReadOnly: true),
                new MountSpec("/shared", "/srv/shared", ReadOnly: false, "rshared"),
                new MountSpec("/seen", "/srv/seen", ReadOnly: false, "rslave"),
            ],
            spec.Mounts);
        Assert.Equal([new DeviceSpec("/dev/fuse", "/dev/fuse", "rwm")], spec.Devices);
        Assert.Equal(new ResourceSpec(CpuPeriod: 100_000, CpuQuota: 50_000, MemoryLimitBytes: 64 << 20, CpusetCpus: "0"), spec.Resources);
        Assert.Equal("counter", spec.Labels["app"]);
        Assert.Equal("counter-0", spec.Annotations["io.kubernetes.pod.name"]);
        Assert.True(spec.Stdin);
        Assert.True(spec.Tty);
        Assert.Equal("counter.log", spec.LogPath);
    }

    [Fact]
    public void A_recorded_container_spec_maps_back_to_the_config_it_came_from()
    {
        var config = RichConfig();

        var back = CriMapping.ToCri(CriMapping.ToDomain(config));

        Assert.Equal(config, back);
    }

    [Fact]
    public void A_minimal_spec_survives_the_trip_through_CRI_unchanged()
    {
        var spec = new ContainerSpec { Name = "sleeper", Image = "busybox:latest", Command = ["sleep", "3600"] };

        var again = CriMapping.ToDomain(CriMapping.ToCri(spec));

        Assert.Equal(JsonSerializer.Serialize(spec), JsonSerializer.Serialize(again));
    }

    [Fact]
    public void Checkpoint_inspect_judges_the_same_request_CreateContainer_would_make()
    {
        var config = RichConfig();

        var created = JsonSerializer.Serialize(CriMapping.ToDomain(config));
        var inspected = JsonSerializer.Serialize(CriMapping.ToRestoreRequest(config));

        Assert.Equal(created, inspected);
    }

    [Fact]
    public void Checkpoint_inspect_reads_a_config_without_metadata_or_image()
    {
        var config = new ContainerConfig { Linux = new LinuxContainerConfig { SecurityContext = new LinuxContainerSecurityContext { NoNewPrivs = true, RunAsUsername = "app" } } };

        var spec = CriMapping.ToRestoreRequest(config);

        Assert.Equal("", spec.Name);
        Assert.Equal("", spec.Image);
        Assert.True(spec.Security.NoNewPrivileges);
        Assert.Equal("app", spec.Security.RunAsUsername);
    }

    [Fact]
    public void CreateContainer_without_metadata_is_an_invalid_argument()
    {
        var e = Assert.Throws<CrestException>(() => CriMapping.ToDomain(new ContainerConfig { Image = new ImageSpec { Image = "busybox" } }));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Equal("container config needs metadata (name)", e.Message);
    }

    [Fact]
    public void CreateContainer_without_an_image_is_an_invalid_argument_naming_the_container()
    {
        var e = Assert.Throws<CrestException>(() => CriMapping.ToDomain(new ContainerConfig { Metadata = new ContainerMetadata { Name = "counter" } }));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Equal("container counter names no image", e.Message);
    }

    [Fact]
    public void A_pod_config_reaches_the_domain_with_its_namespaces_ports_and_handler()
    {
        var config = new PodSandboxConfig
        {
            Metadata = new PodSandboxMetadata { Name = "web", Uid = "u-1", Namespace = "default", Attempt = 1 },
            Hostname = "web-0",
            Linux = new LinuxPodSandboxConfig
            {
                CgroupParent = "/kubepods",
                SecurityContext = new LinuxSandboxSecurityContext
                {
                    Privileged = true,
                    NamespaceOptions = new NamespaceOption { Network = global::Runtime.V1.NamespaceMode.Node, Pid = global::Runtime.V1.NamespaceMode.Container },
                },
            },
        };
        config.PortMappings.Add(new global::Runtime.V1.PortMapping { Protocol = Protocol.Udp, ContainerPort = 53, HostPort = 5353, HostIp = "127.0.0.1" });
        config.Linux.Sysctls["net.ipv4.ping_group_range"] = "0 2147483647";

        var spec = CriMapping.ToDomain(config, "crun");

        Assert.Equal(("web", "u-1", "default", 1u), (spec.Name, spec.Uid, spec.Namespace, spec.Attempt));
        Assert.Equal("web-0", spec.Hostname);
        Assert.Equal("crun", spec.RuntimeHandler);
        Assert.True(spec.Privileged);
        Assert.Equal("/kubepods", spec.CgroupParent);
        Assert.Equal(new Core.PortMapping("UDP", 53, 5353, "127.0.0.1"), Assert.Single(spec.PortMappings));
        Assert.Equal("0 2147483647", spec.Sysctls["net.ipv4.ping_group_range"]);
        Assert.Equal(new NamespaceOptions(Core.NamespaceMode.Node, Core.NamespaceMode.Container), spec.Namespaces);
    }

    [Theory]
    [InlineData(MountPropagation.PropagationPrivate)]
    [InlineData(MountPropagation.PropagationBidirectional)]
    [InlineData(MountPropagation.PropagationHostToContainer)]
    public void ContainerStatus_reports_a_mount_propagation_as_it_was_asked(MountPropagation propagation)
    {
        var config = new ContainerConfig { Metadata = new ContainerMetadata { Name = "c" }, Image = new ImageSpec { Image = "busybox" } };
        config.Mounts.Add(new Mount { ContainerPath = "/data", HostPath = "/srv/data", Propagation = propagation });

        var reported = CriMapping.ToCri(Assert.Single(CriMapping.ToDomain(config).Mounts));

        Assert.Equal(propagation, reported.Propagation);
    }
}
