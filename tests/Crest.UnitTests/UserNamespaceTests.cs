using Crest.Core;
using Crest.Oci;
using Crest.Runtime;

namespace Crest.UnitTests;

/// <summary>What a pod may ask of user namespaces, and the specs a user-namespaced pod's infra and containers get.</summary>
public class UserNamespaceTests
{
    private static readonly IdMapping Root = new(HostId: 1000, ContainerId: 0, Length: 100000);

    private static PodSpec Pod(UserNamespaceOptions? userns, NamespaceMode network = NamespaceMode.Pod, NamespaceMode pid = NamespaceMode.Pod) => new()
    {
        Name = "p",
        Uid = "u",
        Namespace = "n",
        Namespaces = new NamespaceOptions(Network: network, Pid: pid, User: userns),
    };

    private static UserNamespaceOptions PodMode(params IdMapping[] mappings) => new(NamespaceMode.Pod, mappings, mappings);

    [Fact]
    public void No_userns_options_and_mode_NODE_without_mappings_are_accepted()
    {
        UserNamespaces.Validate(Pod(null));
        UserNamespaces.Validate(Pod(new UserNamespaceOptions(NamespaceMode.Node, [], []), network: NamespaceMode.Node));
        UserNamespaces.Validate(Pod(PodMode(Root)));

        Assert.False(Pod(null).Namespaces.HasPodUserNamespace);
        Assert.True(Pod(PodMode(Root)).Namespaces.HasPodUserNamespace);
        Assert.Equal((1000u, 1000u), PodMode(Root).HostRoot());
    }

    public static TheoryData<string, UserNamespaceOptions, NamespaceMode, string> Refused => new()
    {
        { "two mappings", PodMode(Root, new IdMapping(2000, 0, 100000)), NamespaceMode.Pod, "gives 2 uid mappings for its user namespace (mode POD); exactly one is expected" },
        { "no mapping", PodMode(), NamespaceMode.Pod, "gives 0 uid mappings" },
        { "container id 1", PodMode(new IdMapping(1000, 1, 100000)), NamespaceMode.Pod, "uid mapping starts at container id 1; it must start at 0" },
        { "empty range", PodMode(new IdMapping(1000, 0, 0)), NamespaceMode.Pod, "is empty or runs past the last host id" },
        { "past the last id", PodMode(new IdMapping(uint.MaxValue - 10, 0, 100)), NamespaceMode.Pod, "is empty or runs past the last host id" },
        { "CONTAINER", new UserNamespaceOptions(NamespaceMode.Container, [], []), NamespaceMode.Pod, "asks for user namespace mode CONTAINER" },
        { "TARGET", new UserNamespaceOptions(NamespaceMode.Target, [], []), NamespaceMode.Pod, "asks for user namespace mode TARGET" },
        { "NODE with mappings", new UserNamespaceOptions(NamespaceMode.Node, [Root], [Root]), NamespaceMode.Pod, "mappings go only with mode POD" },
        { "host network", PodMode(Root), NamespaceMode.Node, "asks for the node's network namespace" },
    };

    [Theory]
    [MemberData(nameof(Refused))]
    public void Wrong_requests_are_invalid_arguments_that_say_what_is_expected(string why, UserNamespaceOptions userns, NamespaceMode network, string message)
    {
        var e = Assert.Throws<CrestException>(() => UserNamespaces.Validate(Pod(userns, network)));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.True(e.Message.Contains(message, StringComparison.Ordinal), $"{why}: {e.Message}");
        Assert.StartsWith("pod n/p", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_pod_with_the_node_pid_namespace_cannot_have_its_own_user_namespace()
    {
        var e = Assert.Throws<CrestException>(() => UserNamespaces.Validate(Pod(PodMode(Root), pid: NamespaceMode.Node)));

        Assert.Contains("the node's pid namespace", e.Message, StringComparison.Ordinal);
    }

    private static SandboxRecord Sandbox(UserNamespaceOptions? userns, string? netns) => new()
    {
        Id = new string('s', 64),
        Spec = Pod(userns),
        State = SandboxState.Ready,
        CreatedAt = DateTimeOffset.UnixEpoch,
        RuntimeHandler = "runc",
        NetnsPath = netns,
        InfraPid = 4242,
        CgroupsPath = "/kubepods/pod1",
        PinnedNamespaces = new Dictionary<string, string> { ["ipc"] = "/s/ns/ipc", ["uts"] = "/s/ns/uts", ["pid"] = "/s/ns/pid", ["user"] = "/s/ns/user" },
    };

    [Fact]
    public void The_infra_of_a_user_namespaced_pod_makes_the_user_and_network_namespaces_with_the_pods_mapping()
    {
        var spec = SpecBuilder.ForInfra(Sandbox(PodMode(Root), netns: null), "/rootfs", "/usr/bin/catatonit", "/shm", "h");

        Assert.Contains(new SpecNamespace("user"), spec.Linux!.Namespaces);
        Assert.Contains(new SpecNamespace("network"), spec.Linux.Namespaces);
        Assert.Equal(new[] { new SpecIdMapping(0, 1000, 100000) }, spec.Linux.UidMappings!);
        Assert.Equal(new[] { new SpecIdMapping(0, 1000, 100000) }, spec.Linux.GidMappings!);
    }

    [Fact]
    public void An_infra_without_a_user_namespace_has_no_mappings_and_joins_crestds_network_namespace()
    {
        var spec = SpecBuilder.ForInfra(Sandbox(null, netns: "/run/crest/netns/s"), "/rootfs", "/usr/bin/catatonit", "/shm", "h");

        Assert.DoesNotContain(spec.Linux!.Namespaces, n => n.Type == "user");
        Assert.Contains(new SpecNamespace("network", "/run/crest/netns/s"), spec.Linux.Namespaces);
        Assert.Null(spec.Linux.UidMappings);
        Assert.Null(spec.Linux.GidMappings);
    }

    [Fact]
    public void A_container_joins_the_pinned_user_namespace_by_path_without_mappings_of_its_own()
    {
        var ctx = new ContainerContext
        {
            ContainerId = new string('c', 64),
            Sandbox = Sandbox(PodMode(Root), netns: "/run/crest/netns/s"),
            RootfsPath = "/rootfs",
            Image = new ContainerDefaults { Cmd = ["/bin/true"] },
            User = new ProcessUser(0, 0, []),
            HostsFile = "/h",
            HostnameFile = "/hn",
            ResolvConfFile = "/r",
            ShmPath = "/shm",
        };

        var spec = SpecBuilder.ForContainer(new ContainerSpec { Name = "c", Image = "i" }, ctx);

        Assert.Contains(new SpecNamespace("user", "/s/ns/user"), spec.Linux!.Namespaces);
        Assert.Contains(new SpecNamespace("network", "/run/crest/netns/s"), spec.Linux.Namespaces);
        // runc warns about a joined user namespace that also has mappings, and may refuse it one day.
        Assert.Null(spec.Linux.UidMappings);
        Assert.Null(spec.Linux.GidMappings);
    }
}
