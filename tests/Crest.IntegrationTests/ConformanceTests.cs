using Crest.Linux;
using Crest.TestKit;
using Grpc.Core;
using Runtime.V1;
using MountPropagation = Runtime.V1.MountPropagation;

using static Crest.IntegrationTests.PodTests;

namespace Crest.IntegrationTests;

/// <summary>
/// What the CRI validation suite (critest) checks and a kubelet relies on, held here too so that the project's own
/// suite fails first and says why: volume propagation, the node's hostname and hosts file, privileged capabilities,
/// the exec user and its groups under each handler, recursive read-only volumes and log reopening.
/// </summary>
public class ConformanceTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<string> ExecAsync(DaemonHarness d, string id, string script)
    {
        var r = await d.Runtime.ExecSyncAsync(new ExecSyncRequest { ContainerId = id, Cmd = { "/bin/sh", "-c", script }, Timeout = 10 }, cancellationToken: Ct);
        Assert.True(r.ExitCode == 0, $"{script} exited {r.ExitCode}: {r.Stderr.ToStringUtf8()}");
        return r.Stdout.ToStringUtf8();
    }

    [Theory]
    [InlineData("runc")]
    [InlineData("crun")]
    public async Task A_bidirectional_volume_carries_mounts_both_ways_and_a_private_host_path_is_refused_for_propagation(string handler)
    {
        Requires.Handler(handler);
        await using var d = await StartWithImageAsync();
        var linux = new LinuxSyscalls();
        var shared = d.Dir.CreateDirectory("propagation", "shared");
        var fromHost = Directory.CreateDirectory(Path.Combine(shared, "from-host")).FullName;
        var fromContainer = Directory.CreateDirectory(Path.Combine(shared, "from-container")).FullName;
        var source = d.Dir.CreateDirectory("propagation", "source");
        await File.WriteAllTextAsync(Path.Combine(source, "flag"), "from the host", Ct);
        var isolated = d.Dir.CreateDirectory("propagation", "isolated");
        linux.Mount(shared, shared, null, MountOptions.Bind | MountOptions.Recursive, null);
        linux.Mount(null, shared, null, MountOptions.Shared | MountOptions.Recursive, null);
        linux.Mount(isolated, isolated, null, MountOptions.Bind, null);
        linux.Mount(null, isolated, null, MountOptions.Private, null);
        try
        {
            var pod = Pod(d, "propagation");
            pod.Linux.SecurityContext = new LinuxSandboxSecurityContext { Privileged = true };
            var config = Container("propagation", "sleep 60");
            config.Linux.SecurityContext = new LinuxContainerSecurityContext { Privileged = true };
            config.Mounts.Add(new Mount { HostPath = shared, ContainerPath = "/shared", Propagation = MountPropagation.PropagationBidirectional });
            var (podId, id) = await RunAsync(d, pod, config, handler);

            linux.Mount(source, fromHost, null, MountOptions.Bind, null);
            var seen = await ExecAsync(d, id, "cat /shared/from-host/flag");
            await ExecAsync(d, id, "mount -t tmpfs made-inside /shared/from-container && touch /shared/from-container/made-inside");

            var hostToContainer = (Container("isolated", "sleep 60"));
            hostToContainer.Mounts.Add(new Mount { HostPath = isolated, ContainerPath = "/isolated", Propagation = MountPropagation.PropagationHostToContainer });
            var refused = await Assert.ThrowsAsync<RpcException>(() => d.Runtime.CreateContainerAsync(
                new CreateContainerRequest { PodSandboxId = podId, Config = hostToContainer, SandboxConfig = pod }, cancellationToken: Ct).ResponseAsync);
            var status = (await d.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = id }, cancellationToken: Ct)).Status;

            Assert.Equal("from the host", seen);
            Assert.True(File.Exists(Path.Combine(fromContainer, "made-inside")), "a mount made in the container did not reach the host");
            Assert.Equal(MountPropagation.PropagationBidirectional, Assert.Single(status.Mounts, m => m.ContainerPath == "/shared").Propagation);
            Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
            Assert.Contains($"lies on mount {isolated}, which is private", refused.Status.Detail, StringComparison.Ordinal);
            Assert.Contains("mount --make-rshared", refused.Status.Detail, StringComparison.Ordinal);
        }
        finally
        {
            // The container's mount came back to the host: it goes too, before the directories do.
            foreach (var m in new[] { fromContainer, fromHost, shared, isolated })
            {
                for (var i = 0; i < 5 && linux.MountsUnder(m).Contains(m); i++)
                {
                    linux.Unmount(m);
                }
            }
        }
    }

    [Theory]
    [InlineData("runc")]
    [InlineData("crun")]
    public async Task Exec_runs_as_the_containers_user_with_its_groups_and_the_status_reports_them(string handler)
    {
        Requires.Handler(handler);
        await using var d = await StartWithImageAsync();
        var pod = Pod(d, "groups");

        // www (uid 1000) is a member of staff (50000) in the image's /etc/group: Merge, the default, adds it; Strict does not.
        var merge = Container("merge", "grep -E '^(Uid|Groups):' /proc/$$/status | tr -s '\\t ' ' ' > /tmp/main.status", "exec sleep 60");
        merge.Linux.SecurityContext = new LinuxContainerSecurityContext { RunAsUser = new Int64Value { Value = 1000 }, SupplementalGroups = { 4000 } };
        var (podId, mergeId) = await RunAsync(d, pod, merge, handler);
        var strict = Container("strict", "sleep 60");
        strict.Linux.SecurityContext = new LinuxContainerSecurityContext
        {
            RunAsUser = new Int64Value { Value = 1000 },
            SupplementalGroups = { 4000 },
            SupplementalGroupsPolicy = SupplementalGroupsPolicy.Strict,
        };
        var strictId = (await d.Runtime.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = podId, Config = strict, SandboxConfig = pod }, cancellationToken: Ct)).ContainerId;
        await d.Runtime.StartContainerAsync(new StartContainerRequest { ContainerId = strictId }, cancellationToken: Ct);

        var mergeExec = await ExecAsync(d, mergeId, "echo $(id -u) $(id -g) $(id -G)");
        var strictExec = await ExecAsync(d, strictId, "echo $(id -u) $(id -g) $(id -G)");
        var mainProcess = await ExecAsync(d, mergeId, ReadWhenWritten("/tmp/main.status"));
        var status = (await d.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = mergeId }, cancellationToken: Ct)).Status;
        var strictStatus = (await d.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = strictId }, cancellationToken: Ct)).Status;

        Assert.Equal("1000 1000 1000 4000 50000\n", mergeExec);
        Assert.Equal("1000 1000 1000 4000\n", strictExec);
        Assert.Contains("Uid: 1000 1000 1000 1000", mainProcess, StringComparison.Ordinal);
        Assert.Contains("Groups: 1000 4000 50000", mainProcess, StringComparison.Ordinal);
        Assert.Equal(1000, status.User.Linux.Uid);
        Assert.Equal(1000, status.User.Linux.Gid);
        Assert.Equal(new long[] { 1000, 4000, 50000 }, status.User.Linux.SupplementalGroups);
        Assert.Equal(new long[] { 1000, 4000 }, strictStatus.User.Linux.SupplementalGroups);
    }

    [Theory]
    [InlineData("runc")]
    [InlineData("crun")]
    public async Task A_privileged_container_holds_the_capabilities_crestd_holds(string handler)
    {
        Requires.Handler(handler);
        await using var d = await StartWithImageAsync();
        var pod = Pod(d, "privileged");
        pod.Linux.SecurityContext = new LinuxSandboxSecurityContext { Privileged = true };
        var config = Container("privileged", "grep CapEff /proc/$$/status > /tmp/main.status", "exec sleep 60");
        config.Linux.SecurityContext = new LinuxContainerSecurityContext { Privileged = true };
        var (_, id) = await RunAsync(d, pod, config, handler);

        var inside = await ExecAsync(d, id, ReadWhenWritten("/tmp/main.status"));
        // crestd runs in this test process: what it holds is what "all" can mean on this node.
        var held = File.ReadLines("/proc/self/status").Single(l => l.StartsWith("CapEff:", StringComparison.Ordinal));

        Assert.Equal(held.Split(':')[1].Trim(), inside.Split(':')[1].Trim());
    }

    [Fact]
    public async Task A_pod_without_a_hostname_gets_the_nodes_and_a_host_network_pod_the_nodes_hosts_file()
    {
        await using var d = await StartWithImageAsync();
        var pod = Pod(d, "nameless");
        pod.Hostname = "";
        var (_, id) = await RunAsync(d, pod, Container("nameless", "sleep 60"));
        var hostNetwork = Pod(d, "hostnet");
        hostNetwork.Hostname = "";
        hostNetwork.Linux.SecurityContext = new LinuxSandboxSecurityContext { NamespaceOptions = new NamespaceOption { Network = NamespaceMode.Node } };
        var (_, hostId) = await RunAsync(d, hostNetwork, Container("hostnet", "sleep 60"));

        var name = await ExecAsync(d, id, "hostname");
        var hosts = await ExecAsync(d, hostId, "cat /etc/hosts");

        Assert.Equal(System.Net.Dns.GetHostName() + "\n", name);
        Assert.Equal(await File.ReadAllTextAsync("/etc/hosts", Ct), hosts);
    }

    [Theory]
    [InlineData("runc")]
    [InlineData("crun")]
    public async Task A_recursive_read_only_volume_makes_its_submounts_read_only_too(string handler)
    {
        Requires.Handler(handler);
        await using var d = await StartWithImageAsync();
        var linux = new LinuxSyscalls();
        var volume = d.Dir.CreateDirectory("rro");
        var tmpfs = Directory.CreateDirectory(Path.Combine(volume, "tmpfs")).FullName;
        linux.Mount("none", tmpfs, "tmpfs", MountOptions.None, null);
        try
        {
            var config = Container("rro", "sleep 60");
            config.Mounts.Add(new Mount { HostPath = volume, ContainerPath = "/rro", Readonly = true, RecursiveReadOnly = true });
            config.Mounts.Add(new Mount { HostPath = volume, ContainerPath = "/ro", Readonly = true });
            var (podId, id) = await RunAsync(d, Pod(d, "rro"), config, handler);

            var rro = await ExecAsync(d, id, "touch /rro/tmpfs/file 2>&1 || true");
            var ro = await ExecAsync(d, id, "touch /ro/tmpfs/file && echo written");
            var writable = (Container("rw-rro", "sleep 60"));
            writable.Mounts.Add(new Mount { HostPath = volume, ContainerPath = "/rro", Readonly = false, RecursiveReadOnly = true });
            var refused = await Assert.ThrowsAsync<RpcException>(() => d.Runtime.CreateContainerAsync(
                new CreateContainerRequest { PodSandboxId = podId, Config = writable, SandboxConfig = Pod(d, "rro") }, cancellationToken: Ct).ResponseAsync);

            Assert.Contains("Read-only file system", rro, StringComparison.Ordinal);
            Assert.Equal("written\n", ro);
            Assert.Equal(StatusCode.InvalidArgument, refused.StatusCode);
        }
        finally
        {
            linux.Unmount(tmpfs);
        }
    }

    [Fact]
    public async Task ReopenContainerLog_has_the_new_file_in_place_when_it_returns_and_the_old_one_stops_growing()
    {
        await using var d = await StartWithImageAsync();
        var (_, id) = await RunAsync(d, Pod(d, "reopen"), Container("reopen", "while true; do echo tick; sleep 0.1; done"));
        var log = (await d.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = id }, cancellationToken: Ct)).Status.LogPath;
        await WaitForAsync(() => File.Exists(log) && new FileInfo(log).Length > 0, "the first log line");

        File.Move(log, log + ".old");
        await d.Runtime.ReopenContainerLogAsync(new ReopenContainerLogRequest { ContainerId = id }, cancellationToken: Ct);
        var existsOnReturn = File.Exists(log);
        await WaitForAsync(() => new FileInfo(log).Length > 0, "a line in the reopened log");
        var oldLength = new FileInfo(log + ".old").Length;
        await WaitForAsync(() => File.ReadAllLines(log).Length >= 5, "five lines in the reopened log");

        Assert.True(existsOnReturn, "the new log file did not exist when ReopenContainerLog returned");
        Assert.Equal(oldLength, new FileInfo(log + ".old").Length);
    }

    /// <summary>A script that prints a file the container's main process writes, once it is there (the exec's timeout bounds it).</summary>
    private static string ReadWhenWritten(string path) => $"while [ ! -s {path} ]; do sleep 0.05; done; cat {path}";

    private static Task WaitForAsync(Func<bool> condition, string what) => Eventually.UntilAsync(condition, what, ct: Ct);
}
