using Crest.Core;
using Crest.Oci;
using Crest.Runtime;

namespace Crest.UnitTests;

public class SpecBuilderTests
{
    internal static SandboxRecord Sandbox(NamespaceMode network = NamespaceMode.Pod) => new()
    {
        Id = new string('s', 64),
        Spec = new PodSpec { Name = "p", Uid = "u", Namespace = "n", Namespaces = new NamespaceOptions(Network: network) },
        State = SandboxState.Ready,
        CreatedAt = DateTimeOffset.UnixEpoch,
        RuntimeHandler = "runc",
        NetnsPath = "/run/crest/netns/s",
        InfraPid = 4242,
        CgroupsPath = "/kubepods/pod1",
    };

    internal static ContainerContext Context(ContainerDefaults? image = null, NamespaceMode network = NamespaceMode.Pod) => new()
    {
        ContainerId = new string('c', 64),
        Sandbox = Sandbox(network),
        RootfsPath = "/var/lib/crest/containers/c/rootfs",
        Image = image ?? new ContainerDefaults { Entrypoint = ["/entry"], Cmd = ["default-arg"], Env = ["PATH=/bin", "A=image"], WorkingDir = "/app" },
        User = new ProcessUser(0, 0, []),
        HostsFile = "/h",
        HostnameFile = "/hn",
        ResolvConfFile = "/r",
        ShmPath = "/shm",
    };

    [Fact]
    public void Command_replaces_the_entrypoint_and_args_replace_the_cmd()
    {
        var onlyArgs = SpecBuilder.ForContainer(new ContainerSpec { Name = "c", Image = "i", Args = ["x"] }, Context());
        var command = SpecBuilder.ForContainer(new ContainerSpec { Name = "c", Image = "i", Command = ["/bin/sh"], Args = ["-c", "true"] }, Context());
        var neither = SpecBuilder.ForContainer(new ContainerSpec { Name = "c", Image = "i" }, Context());

        Assert.Equal(["/entry", "x"], onlyArgs.Process.Args);
        Assert.Equal(["/bin/sh", "-c", "true"], command.Process.Args);
        Assert.Equal(["/entry", "default-arg"], neither.Process.Args);
        Assert.Equal("/app", neither.Process.Cwd);
    }

    [Fact]
    public void A_container_with_no_command_anywhere_is_refused_by_name()
    {
        var e = Assert.Throws<CrestException>(() => SpecBuilder.ForContainer(new ContainerSpec { Name = "empty", Image = "scratch" }, Context(new ContainerDefaults())));

        Assert.Contains("container empty has no command", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Request_env_overrides_the_image_env_in_place()
    {
        var spec = SpecBuilder.ForContainer(new ContainerSpec { Name = "c", Image = "i", Envs = [new("A", "request"), new("B", "new")] }, Context());

        Assert.Equal(["PATH=/bin", "A=request", "B=new"], spec.Process.Env);
    }

    [Fact]
    public void Capabilities_add_and_drop_from_the_default_set()
    {
        Assert.Contains("CAP_NET_ADMIN", SpecBuilder.Capabilities(["NET_ADMIN"], []));
        Assert.DoesNotContain("CAP_NET_RAW", SpecBuilder.Capabilities([], ["net_raw"]));
        Assert.Equal(["CAP_NET_BIND_SERVICE"], SpecBuilder.Capabilities(["NET_BIND_SERVICE"], ["ALL"]));
        Assert.Equal(SpecBuilder.AllCapabilities, SpecBuilder.Capabilities(["ALL"], []));
        Assert.Throws<CrestException>(() => SpecBuilder.Capabilities(["NOT_A_CAP"], []));
    }

    [Fact]
    public void Containers_join_the_pods_network_uts_and_ipc_and_get_their_own_pid_namespace()
    {
        var own = new SecuritySpec { Namespaces = new NamespaceOptions(Pid: NamespaceMode.Container) };
        var spec = SpecBuilder.ForContainer(new ContainerSpec { Name = "c", Image = "i", Security = own }, Context());
        var byDefault = SpecBuilder.ForContainer(new ContainerSpec { Name = "c", Image = "i" }, Context());

        Assert.Contains(new SpecNamespace("network", "/run/crest/netns/s"), spec.Linux.Namespaces);
        Assert.Contains(new SpecNamespace("uts", "/proc/4242/ns/uts"), spec.Linux.Namespaces);
        Assert.Contains(new SpecNamespace("ipc", "/proc/4242/ns/ipc"), spec.Linux.Namespaces);
        Assert.Contains(new SpecNamespace("pid"), spec.Linux.Namespaces);
        Assert.Equal($"/kubepods/pod1/crest-{new string('c', 64)}", spec.Linux.CgroupsPath);
        // No namespace options: the CRI default, POD, joins the infra process's pid namespace.
        Assert.Contains(new SpecNamespace("pid", "/proc/4242/ns/pid"), byDefault.Linux.Namespaces);
    }

    [Fact]
    public void Containers_join_the_pods_pinned_namespace_files_when_there_are_some()
    {
        var context = Context() with
        {
            Sandbox = Sandbox() with { PinnedNamespaces = new Dictionary<string, string> { ["uts"] = "/run/crest/sandboxes/s/ns/uts", ["ipc"] = "/run/crest/sandboxes/s/ns/ipc" } },
        };

        var spec = SpecBuilder.ForContainer(new ContainerSpec { Name = "c", Image = "i", Security = new SecuritySpec { Namespaces = new NamespaceOptions(Pid: NamespaceMode.Container) } }, context);

        Assert.Contains(new SpecNamespace("uts", "/run/crest/sandboxes/s/ns/uts"), spec.Linux.Namespaces);
        Assert.Contains(new SpecNamespace("ipc", "/run/crest/sandboxes/s/ns/ipc"), spec.Linux.Namespaces);
        Assert.DoesNotContain(spec.Linux.Namespaces, n => n.Path?.StartsWith("/proc/", StringComparison.Ordinal) == true);
    }

    [Fact]
    public void A_host_network_pod_joins_no_network_namespace()
    {
        var spec = SpecBuilder.ForContainer(new ContainerSpec { Name = "c", Image = "i" }, Context(network: NamespaceMode.Node));

        Assert.DoesNotContain(spec.Linux.Namespaces, n => n.Type is "network" or "uts");
    }

    [Fact]
    public void Privileged_containers_get_every_capability_and_no_masks_or_seccomp()
    {
        var spec = SpecBuilder.ForContainer(new ContainerSpec
        {
            Name = "c",
            Image = "i",
            Security = new SecuritySpec { Privileged = true, Seccomp = SeccompMode.RuntimeDefault },
        }, Context());

        Assert.Equal(SpecBuilder.AllCapabilities, spec.Process.Capabilities!.Bounding);
        Assert.Null(spec.Linux.MaskedPaths);
        Assert.Null(spec.Linux.Seccomp);
    }

    [Theory]
    [InlineData(null, 15)]
    [InlineData("SIGQUIT", 3)]
    [InlineData("INT", 2)]
    [InlineData("9", 9)]
    public void Stop_signals_are_read_from_the_image(string? signal, int number) => Assert.Equal(number, ContainerService.Signal(signal));
}

public class ContainerLogPathTests
{
    [Theory]
    [InlineData("ctr.log", "/var/log/pods/p/ctr.log")]
    [InlineData("web/0.log", "/var/log/pods/p/web/0.log")]
    public void Log_paths_resolve_inside_the_pods_log_directory(string logPath, string expected) =>
        Assert.Equal(expected, ContainerService.LogFile("/var/log/pods/p", logPath, "c"));

    [Theory]
    [InlineData("../../../etc/cron.d/x")]
    [InlineData("/etc/shadow")]
    public void Log_paths_that_leave_the_log_directory_are_refused(string logPath)
    {
        var e = Assert.Throws<CrestException>(() => ContainerService.LogFile("/var/log/pods/p", logPath, "c"));

        Assert.Contains("must be a relative path inside the pod's log directory", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void No_log_directory_or_path_means_no_log_file() => Assert.Equal("", ContainerService.LogFile("", "x.log", "c"));

    [Fact]
    public void A_pod_without_a_hostname_takes_the_nodes_never_its_long_name()
    {
        var longName = new string('n', 80);
        var unnamed = new PodSpec { Name = longName, Uid = "u", Namespace = "n" };

        Assert.Equal("node-1", SpecBuilder.PodHostname(unnamed, "node-1"));
        Assert.Equal("web", SpecBuilder.PodHostname(unnamed with { Hostname = "web" }, "node-1"));
        Assert.Equal("node-1", SpecBuilder.PodHostname(unnamed with { Hostname = "web", Namespaces = new NamespaceOptions(Network: NamespaceMode.Node) }, "node-1"));
    }

    [Fact]
    public void Privileged_and_add_ALL_grant_the_nodes_capabilities_not_every_one()
    {
        var node = SpecBuilder.CapabilityNames(0b111); // chown, dac_override, dac_read_search
        var context = SpecBuilderTests.Context() with { NodeCapabilities = node };

        var privileged = SpecBuilder.ForContainer(new ContainerSpec { Name = "c", Image = "i", Security = new SecuritySpec { Privileged = true } }, context);
        var all = SpecBuilder.ForContainer(new ContainerSpec { Name = "c", Image = "i", Security = new SecuritySpec { AddCapabilities = ["ALL"] } }, context);

        Assert.Equal(["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH"], privileged.Process.Capabilities!.Bounding);
        Assert.Equal(node, all.Process.Capabilities!.Effective);
    }

    [Fact]
    public void Recursive_read_only_mounts_use_rro_and_need_read_only_private_mounts()
    {
        MountSpec Mount(bool readOnly, string propagation = "private") => new("/mnt", "/host", readOnly, propagation, RecursiveReadOnly: true);
        ContainerSpec With(MountSpec m) => new() { Name = "c", Image = "i", Mounts = [m] };

        var spec = SpecBuilder.ForContainer(With(Mount(readOnly: true)), SpecBuilderTests.Context());
        var plain = SpecBuilder.ForContainer(With(Mount(readOnly: true) with { RecursiveReadOnly = false }), SpecBuilderTests.Context());

        Assert.Contains("rro", spec.Mounts.Single(m => m.Destination == "/mnt").Options!);
        Assert.Contains("ro", plain.Mounts.Single(m => m.Destination == "/mnt").Options!);
        Assert.Equal(ErrorKind.InvalidArgument, Assert.Throws<CrestException>(() => SpecBuilder.ForContainer(With(Mount(readOnly: false)), SpecBuilderTests.Context())).Kind);
        Assert.Equal(ErrorKind.InvalidArgument, Assert.Throws<CrestException>(() => SpecBuilder.ForContainer(With(Mount(readOnly: true, "rslave")), SpecBuilderTests.Context())).Kind);
    }

    [Theory]
    [InlineData(new string[0], null)]
    [InlineData(new[] { "private" }, null)]
    [InlineData(new[] { "host_to_container", "private" }, "rslave")]
    [InlineData(new[] { "host_to_container", "bidirectional" }, "rshared")]
    public void A_shared_or_slave_volume_sets_the_root_mounts_propagation(string[] propagations, string? expected)
    {
        var spec = new ContainerSpec
        {
            Name = "c",
            Image = "i",
            Mounts = [.. propagations.Select((p, i) => new MountSpec($"/v{i}", $"/host/v{i}", ReadOnly: false, p))],
        };

        var built = SpecBuilder.ForContainer(spec, SpecBuilderTests.Context());

        Assert.Equal(expected, built.Linux!.RootfsPropagation);
        Assert.All(built.Mounts.Where(m => m.Destination.StartsWith("/v", StringComparison.Ordinal)), m => Assert.Contains(
            propagations[int.Parse(m.Destination[2..], System.Globalization.CultureInfo.InvariantCulture)] switch { "bidirectional" => "rshared", "host_to_container" => "rslave", _ => "rprivate" },
            m.Options!));
    }

    [Fact]
    public void Crestds_capabilities_are_its_effective_set_within_its_bounding_set()
    {
        Assert.Equal(0x5UL, Crest.Linux.LinuxSyscalls.ParseHeldCapabilities("Name:\tcrestd\nCapEff:\t0000000000000007\nCapBnd:\t000000000000000d\n"));
    }
}
