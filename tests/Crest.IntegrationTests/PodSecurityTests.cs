using System.Net.Sockets;
using ContainerRecord = Crest.Core.ContainerRecord;
using ContainerSpec = Crest.Core.ContainerSpec;
using IRuntimeStore = Crest.Core.IRuntimeStore;
using Crest.TestKit;
using Microsoft.Extensions.DependencyInjection;
using Runtime.V1;
using static Crest.IntegrationTests.PodTests;

namespace Crest.IntegrationTests;

/// <summary>What the spec builder grants and withholds, checked from inside real containers.</summary>
public class PodSecurityTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<string> LogOfAsync(DaemonHarness d, ContainerConfig config, string podName, Action<PodSandboxConfig>? editPod = null)
    {
        var pod = Pod(d, podName);
        editPod?.Invoke(pod);
        var (_, id) = await RunAsync(d, pod, config);
        var status = await WaitExitedAsync(d, id, TimeSpan.FromSeconds(20));
        Assert.Equal(global::Runtime.V1.ContainerState.ContainerExited, status.State);
        return await File.ReadAllTextAsync(status.LogPath, Ct);
    }

    [Theory]
    [InlineData("runc")]
    [InlineData("crun")]
    public async Task A_host_port_mapping_reaches_the_container(string handler)
    {
        Requires.Handler(handler);
        await using var d = await StartWithImageAsync();
        var pod = Pod(d, "ported");
        var port = LocalRegistry.FreePort();
        pod.PortMappings.Add(new global::Runtime.V1.PortMapping { Protocol = Protocol.Tcp, ContainerPort = 8080, HostPort = port, HostIp = "127.0.0.1" });
        await RunAsync(d, pod, Container("httpd", "mkdir -p /tmp/www", "echo mapped > /tmp/www/index.html", "exec /bin/busybox httpd -f -p 8080 -h /tmp/www"), handler);

        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(3) };
        var body = await Eventually.ServedAsync(http, new Uri($"http://127.0.0.1:{port}/index.html"), ct: Ct);

        Assert.Equal("mapped\n", body);
    }

    [Fact]
    public async Task Default_containers_lack_dangerous_capabilities_masked_paths_and_blocked_syscalls()
    {
        await using var d = await StartWithImageAsync();
        var config = Container("confined",
            "grep CapEff /proc/self/status",
            "[ -s /proc/kcore ] && echo kcore=readable || echo kcore=masked",
            "echo 1 > /proc/sys/kernel/shm_rmid_forced 2>/dev/null && echo procsys=rw || echo procsys=ro",
            "unshare -n true 2>/dev/null && echo unshare=allowed || echo unshare=blocked");
        config.Linux.SecurityContext = new LinuxContainerSecurityContext { Seccomp = new SecurityProfile { ProfileType = SecurityProfile.Types.ProfileType.RuntimeDefault } };

        var log = await LogOfAsync(d, config, "confined");

        // The default set: chown dac_override fowner fsetid kill setgid setuid setpcap net_bind_service net_raw sys_chroot mknod audit_write setfcap.
        Assert.Contains("CapEff:\t00000000a80425fb", log, StringComparison.Ordinal);
        Assert.Contains("kcore=masked", log, StringComparison.Ordinal);
        Assert.Contains("procsys=ro", log, StringComparison.Ordinal);
        Assert.Contains("unshare=blocked", log, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Added_and_dropped_capabilities_change_the_set()
    {
        await using var d = await StartWithImageAsync();
        var config = Container("caps", "grep CapEff /proc/self/status");
        config.Linux.SecurityContext = new LinuxContainerSecurityContext
        {
            Capabilities = new Capability { AddCapabilities = { "NET_ADMIN" }, DropCapabilities = { "ALL" } },
        };

        var log = await LogOfAsync(d, config, "caps");

        Assert.Contains("CapEff:\t0000000000001000", log, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Bind_mounts_are_mounted_read_only_when_asked()
    {
        await using var d = await StartWithImageAsync();
        var data = d.Dir.CreateDirectory("data");
        await File.WriteAllTextAsync(Path.Combine(data, "in"), "from host", Ct);
        var config = Container("binds", "cat /data/in; echo", "touch /data/out 2>/dev/null && echo data=rw || echo data=ro");
        config.Mounts.Add(new Mount { ContainerPath = "/data", HostPath = data, Readonly = true });

        var log = await LogOfAsync(d, config, "binds");

        Assert.Contains(" from host", log, StringComparison.Ordinal);
        Assert.Contains("data=ro", log, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(data, "out")));
    }

    [Fact]
    public async Task Dns_config_and_sysctls_reach_the_pod()
    {
        await using var d = await StartWithImageAsync();
        var config = Container("dns", "cat /etc/resolv.conf", "cat /proc/sys/net/ipv4/ip_unprivileged_port_start");

        var log = await LogOfAsync(d, config, "dns", pod =>
        {
            pod.DnsConfig = new DNSConfig { Servers = { "10.96.0.10" }, Searches = { "test.svc.cluster.local" }, Options = { "ndots:5" } };
            pod.Linux.Sysctls["net.ipv4.ip_unprivileged_port_start"] = "80";
        });

        Assert.Contains("stdout F nameserver 10.96.0.10\n", log, StringComparison.Ordinal);
        Assert.Contains("stdout F search test.svc.cluster.local\n", log, StringComparison.Ordinal);
        Assert.Contains("stdout F options ndots:5\n", log, StringComparison.Ordinal);
        Assert.Contains("stdout F 80\n", log, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_pod_shared_pid_namespace_shows_the_infra_process()
    {
        await using var d = await StartWithImageAsync();
        var config = Container("pidns", "cat /proc/1/cmdline | tr '\\0' ' '; echo");
        config.Linux.SecurityContext = new LinuxContainerSecurityContext { NamespaceOptions = new NamespaceOption { Pid = global::Runtime.V1.NamespaceMode.Pod } };

        var log = await LogOfAsync(d, config, "pidns");

        Assert.Contains("/catatonit -P", log, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("runc")]
    [InlineData("crun")]
    public async Task UpdateContainerResources_changes_the_memory_limit_of_a_running_container(string handler)
    {
        Requires.Handler(handler);
        await using var d = await StartWithImageAsync();
        var config = Container("grow", "sleep 60");
        config.Linux.Resources = new LinuxContainerResources { MemoryLimitInBytes = 64 * 1024 * 1024 };
        var (_, id) = await RunAsync(d, Pod(d, "grow"), config, handler);

        await d.Runtime.UpdateContainerResourcesAsync(new UpdateContainerResourcesRequest
        {
            ContainerId = id,
            Linux = new LinuxContainerResources { MemoryLimitInBytes = 128 * 1024 * 1024 },
        }, cancellationToken: Ct);

        var status = await d.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = id, Verbose = true }, cancellationToken: Ct);
        var pid = System.Text.Json.JsonDocument.Parse(status.Info["info"]).RootElement.GetProperty("pid").GetInt32();
        var memoryCgroup = File.ReadAllLines($"/proc/{pid}/cgroup").Select(l => l.Split(':')).First(f => f[1].Split(',').Contains("memory"))[2];
        var limit = await File.ReadAllTextAsync($"/sys/fs/cgroup/memory{memoryCgroup}/memory.limit_in_bytes", Ct);
        Assert.Equal((128 * 1024 * 1024).ToString(System.Globalization.CultureInfo.InvariantCulture), limit.Trim());
    }

    [Fact]
    public async Task A_container_whose_monitor_was_killed_shows_as_exited_unknown_and_can_be_removed()
    {
        await using var d = await StartWithImageAsync();
        var (_, id) = await RunAsync(d, Pod(d, "orphan"), Container("orphan", "sleep 60"));
        var layout = d.Daemon.Services.GetRequiredService<Crest.Runtime.RuntimeLayout>();
        var conmon = int.Parse(await File.ReadAllTextAsync(Path.Combine(layout.ContainerStateDir(id), "conmon.pid"), Ct), System.Globalization.CultureInfo.InvariantCulture);
        var info = await d.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = id, Verbose = true }, cancellationToken: Ct);
        var pid = System.Text.Json.JsonDocument.Parse(info.Info["info"]).RootElement.GetProperty("pid").GetInt32();

        System.Diagnostics.Process.GetProcessById(conmon).Kill();
        System.Diagnostics.Process.GetProcessById(pid).Kill();
        var status = await WaitExitedAsync(d, id, TimeSpan.FromSeconds(20));
        await d.Runtime.RemoveContainerAsync(new RemoveContainerRequest { ContainerId = id }, cancellationToken: Ct);

        Assert.Equal(global::Runtime.V1.ContainerState.ContainerExited, status.State);
        Assert.Equal(255, status.ExitCode);
        Assert.Equal("Unknown", status.Reason);
        Assert.Contains("conmon monitor is gone", status.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_sandbox_half_made_when_crestd_died_is_torn_down_on_recovery()
    {
        await using var d = await StartWithImageAsync();
        var store = d.Daemon.Services.GetRequiredService<IRuntimeStore>();
        var layout = d.Daemon.Services.GetRequiredService<Crest.Runtime.RuntimeLayout>();
        var linux = new Crest.Linux.LinuxSyscalls();
        var id = new string('d', 64);
        linux.CreateNetworkNamespace(layout.NetnsFile(id));
        await store.PutSandboxAsync(new Crest.Core.SandboxRecord
        {
            Id = id,
            Spec = new Crest.Core.PodSpec { Name = "half", Uid = "u", Namespace = "n", Attempt = 1 },
            State = Crest.Core.SandboxState.Creating,
            CreatedAt = DateTimeOffset.UtcNow,
            RuntimeHandler = "runc",
        }, Ct);

        var rolledBack = await d.Daemon.Services.GetRequiredService<Crest.Runtime.SandboxService>().RecoverAsync(Ct);

        Assert.Equal(1, rolledBack);
        Assert.Null(await store.GetSandboxAsync(id, Ct));
        Assert.False(File.Exists(layout.NetnsFile(id)));
        Assert.Empty(linux.MountsUnder(layout.NetnsFile(id)));
    }

    [Theory]
    [InlineData("runc")]
    [InlineData("crun")]
    public async Task ExecSync_returns_output_and_exit_code_and_a_timeout_kills_the_command(string handler)
    {
        Requires.Handler(handler);
        await using var d = await StartWithImageAsync();
        var config = Container("execme", "sleep 60");
        config.Envs.Add(new KeyValue { Key = "WHO", Value = "crest" });
        var (_, id) = await RunAsync(d, Pod(d, "execme"), config, handler);

        var r = await d.Runtime.ExecSyncAsync(new ExecSyncRequest { ContainerId = id, Cmd = { "/bin/sh", "-c", "echo hello $WHO; echo oops >&2; exit 3" }, Timeout = 10 }, cancellationToken: Ct);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var timeout = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => d.Runtime.ExecSyncAsync(
            new ExecSyncRequest { ContainerId = id, Cmd = { "/bin/sh", "-c", "touch /tmp/started; sleep 30; touch /tmp/finished" }, Timeout = 1 }, cancellationToken: Ct).ResponseAsync);
        clock.Stop();
        var after = await d.Runtime.ExecSyncAsync(new ExecSyncRequest { ContainerId = id, Cmd = { "/bin/sh", "-c", "ls /tmp; ps -o pid,args | grep '[s]leep 30' || true" }, Timeout = 10 }, cancellationToken: Ct);

        Assert.Equal("hello crest\n", r.Stdout.ToStringUtf8());
        Assert.Equal("oops\n", r.Stderr.ToStringUtf8());
        Assert.Equal(3, r.ExitCode);
        Assert.Equal(Grpc.Core.StatusCode.DeadlineExceeded, timeout.StatusCode);
        Assert.Contains("was killed", timeout.Status.Detail, StringComparison.Ordinal);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"the timeout took {clock.Elapsed}");
        Assert.Contains("started", after.Stdout.ToStringUtf8(), StringComparison.Ordinal);
        Assert.DoesNotContain("finished", after.Stdout.ToStringUtf8(), StringComparison.Ordinal);
        // The kubelet's exec probes rely on it: the command and what it started are gone when the call returns.
        Assert.DoesNotContain("sleep 30", after.Stdout.ToStringUtf8(), StringComparison.Ordinal);

        // A command run directly (no shell) is the runtime client's child: it must be reaped, not left as a zombie of the
        // container's init (this one, a plain sleep, reaps nothing), or it still shows in the process list.
        await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => d.Runtime.ExecSyncAsync(
            new ExecSyncRequest { ContainerId = id, Cmd = { "/bin/busybox", "sleep", "4321" }, Timeout = 1 }, cancellationToken: Ct).ResponseAsync);
        // Command lines for the living (a zombie has none), states for the dead; one line per process.
        var commandLines = await d.Runtime.ExecSyncAsync(new ExecSyncRequest { ContainerId = id, Cmd = { "/bin/sh", "-c", "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done" }, Timeout = 10 }, cancellationToken: Ct);
        var states = await d.Runtime.ExecSyncAsync(new ExecSyncRequest { ContainerId = id, Cmd = { "/bin/sh", "-c", "cat /proc/[0-9]*/stat" }, Timeout = 10 }, cancellationToken: Ct);
        Assert.DoesNotContain("sleep 4321", commandLines.Stdout.ToStringUtf8(), StringComparison.Ordinal);
        Assert.DoesNotContain(") Z ", states.Stdout.ToStringUtf8(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Container_stats_grow_when_the_container_allocates_memory_and_writes_files()
    {
        await using var d = await StartWithImageAsync();
        var (_, id) = await RunAsync(d, Pod(d, "stats"), Container("stats", "sleep 1", "x=$(head -c 60000000 /dev/zero | tr '\\0' a)", "head -c 3000000 /dev/zero > /tmp/blob", "sleep 60", "echo the shell must not exec sleep and drop its memory"));
        var before = (await d.Runtime.ContainerStatsAsync(new ContainerStatsRequest { ContainerId = id }, cancellationToken: Ct)).Stats;

        // The script sleeps 1 s, then allocates and writes: its stats grow once it did.
        var after = await Eventually.LastAsync(
            async () => (await d.Runtime.ContainerStatsAsync(new ContainerStatsRequest { ContainerId = id }, cancellationToken: Ct)).Stats,
            s => s.Memory.WorkingSetBytes.Value > before.Memory.WorkingSetBytes.Value + 20_000_000 && s.WritableLayer.UsedBytes.Value >= 3_000_000, ct: Ct);
        var listed = await d.Runtime.ListContainerStatsAsync(new ListContainerStatsRequest(), cancellationToken: Ct);

        Assert.True(after.Memory.WorkingSetBytes.Value > before.Memory.WorkingSetBytes.Value + 20_000_000,
            $"working set {before.Memory.WorkingSetBytes.Value} -> {after.Memory.WorkingSetBytes.Value}");
        Assert.True(after.Cpu.UsageCoreNanoSeconds.Value > before.Cpu.UsageCoreNanoSeconds.Value);
        Assert.True(after.WritableLayer.UsedBytes.Value >= 3_000_000, $"writable layer {after.WritableLayer.UsedBytes.Value}");
        Assert.Contains(listed.Stats, s => s.Attributes.Id == id);

        var pods = await d.Runtime.ListPodSandboxStatsAsync(new ListPodSandboxStatsRequest(), cancellationToken: Ct);
        var pod = Assert.Single(pods.Stats);
        // Read a moment later: the blob's page cache may have turned inactive since, which leaves the working set (a few MiB).
        Assert.True(pod.Linux.Memory.WorkingSetBytes.Value >= after.Memory.WorkingSetBytes.Value - (8 << 20),
            $"pod working set {pod.Linux.Memory.WorkingSetBytes.Value}, its container's a moment before {after.Memory.WorkingSetBytes.Value}");
        Assert.Equal(id, Assert.Single(pod.Linux.Containers).Attributes.Id);
        Assert.Equal("eth0", pod.Linux.Network.DefaultInterface.Name);
    }

    [Fact]
    public async Task Container_events_arrive_in_order_and_an_exit_is_announced_without_anyone_listing()
    {
        await using var d = await StartWithImageAsync();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        cts.CancelAfter(TimeSpan.FromSeconds(30));
        using var stream = d.Runtime.GetContainerEvents(new GetEventsRequest(), cancellationToken: cts.Token);

        // The stream is subscribed once it carries an event: a probe container's.
        var (_, probe) = await RunAsync(d, Pod(d, "probe"), Container("probe", "sleep 60"));
        while (await stream.ResponseStream.MoveNext(cts.Token) && stream.ResponseStream.Current.ContainerId != probe)
        {
        }

        var (_, id) = await RunAsync(d, Pod(d, "events"), Container("events", "sleep 1", "exit 0"));
        var seen = new List<ContainerEventType>();
        while (seen.Count < 3 && await stream.ResponseStream.MoveNext(cts.Token))
        {
            if (stream.ResponseStream.Current.ContainerId == id)
            {
                seen.Add(stream.ResponseStream.Current.ContainerEventType);
            }
        }

        await d.Runtime.RemoveContainerAsync(new RemoveContainerRequest { ContainerId = id }, cancellationToken: Ct);
        while (await stream.ResponseStream.MoveNext(cts.Token) && stream.ResponseStream.Current.ContainerId != id)
        {
        }

        seen.Add(stream.ResponseStream.Current.ContainerEventType);
        Assert.Equal([ContainerEventType.ContainerCreatedEvent, ContainerEventType.ContainerStartedEvent, ContainerEventType.ContainerStoppedEvent, ContainerEventType.ContainerDeletedEvent], seen);
    }

    [Fact]
    public async Task Removing_the_image_of_a_running_container_keeps_its_snapshots_until_the_container_goes()
    {
        await using var d = await StartWithImageAsync();
        var (podId, id) = await RunAsync(d, Pod(d, "keeper"), Container("keeper", "sleep 60", "true"));

        await d.Images.RemoveImageAsync(new RemoveImageRequest { Image = new ImageSpec { Image = PodTests.Image } }, cancellationToken: Ct);
        var ls = await d.Runtime.ExecSyncAsync(new ExecSyncRequest { ContainerId = id, Cmd = { "/bin/busybox", "ls", "/bin" }, Timeout = 10 }, cancellationToken: Ct);
        var snapshotsWhileRunning = Directory.EnumerateDirectories(d.Daemon.Config.Paths.Snapshots).Count();
        await d.Runtime.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = podId }, cancellationToken: Ct);
        await d.Daemon.Services.GetRequiredService<Crest.Images.ImageService>().CollectGarbageAsync(Ct);

        Assert.Empty((await d.Images.ListImagesAsync(new ListImagesRequest(), cancellationToken: Ct)).Images);
        Assert.Contains("busybox", ls.Stdout.ToStringUtf8(), StringComparison.Ordinal);
        Assert.Equal(1, snapshotsWhileRunning);
        Assert.Empty(Directory.EnumerateDirectories(d.Daemon.Config.Paths.Snapshots));
    }

    [Fact]
    public async Task A_create_half_done_when_crestd_died_is_rolled_back_on_recovery()
    {
        await using var d = await StartWithImageAsync();
        var pod = Pod(d, "halfdone");
        var p = await d.Runtime.RunPodSandboxAsync(new RunPodSandboxRequest { Config = pod }, cancellationToken: Ct);
        var store = d.Daemon.Services.GetRequiredService<IRuntimeStore>();
        var layout = d.Daemon.Services.GetRequiredService<Crest.Runtime.RuntimeLayout>();
        var half = new ContainerRecord
        {
            Id = new string('a', 64),
            SandboxId = p.PodSandboxId,
            Spec = new ContainerSpec { Name = "half", Image = PodTests.Image },
            State = Crest.Core.ContainerState.Creating,
            CreatedAt = DateTimeOffset.UtcNow,
            ImageId = "sha256:" + new string('b', 64),
            ImageRef = PodTests.Image,
            RuntimeHandler = "runc",
        };
        await store.PutContainerAsync(half, Ct);
        Directory.CreateDirectory(Path.Combine(layout.ContainerDir(half.Id), "upper"));

        var (kept, rolledBack) = await d.Daemon.Services.GetRequiredService<Crest.Runtime.ContainerService>().RecoverAsync(Ct);

        Assert.Equal(1, rolledBack);
        Assert.Null(await store.GetContainerAsync(half.Id, Ct));
        Assert.False(Directory.Exists(layout.ContainerDir(half.Id)));
        Assert.Equal(0, kept);
    }
}
