using System.Diagnostics;
using System.Formats.Tar;
using Crest.TestKit;
using Grpc.Core;
using Runtime.V1;

namespace Crest.IntegrationTests;

/// <summary>Pods and containers on real runc/crun, conmon, CNI bridge and overlay, driven through raw CRI.</summary>
public class PodTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    internal const string Image = "localhost/crest-test/busybox:v1";

    /// <summary>A daemon with a busybox image imported (no registry needed).</summary>
    internal static async Task<DaemonHarness> StartWithImageAsync(Func<Daemon.Config.CrestConfig, Daemon.Config.CrestConfig>? adjust = null)
    {
        Requires.Root();
        Requires.Binary("conmon");
        Requires.Binary("runc");
        var d = await DaemonHarness.StartAsync(adjust);
        var rootfs = d.Dir.Combine("rootfs.tar");
        await using (var f = File.Create(rootfs))
        await using (var t = new TarWriter(f, TarEntryFormat.Pax))
        {
            TestImages.Dir(t, "bin");
            TestImages.Dir(t, "etc");
            TestImages.Dir(t, "tmp", mode: 0x3FF);
            TestImages.File(t, "bin/busybox", await File.ReadAllBytesAsync(TestImages.BusyboxStatic, Ct), mode: 0x1ED);
            TestImages.Symlink(t, "bin/sh", "busybox");
            TestImages.File(t, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nwww:x:1000:1000:www:/tmp:/bin/sh\n"u8.ToArray());
            TestImages.File(t, "etc/group", "root:x:0:\nwww:x:1000:\nstaff:x:50000:www\n"u8.ToArray());
        }

        var images = Microsoft.Extensions.DependencyInjection.ServiceProviderServiceExtensions.GetRequiredService<Images.ImageService>(d.Daemon.Services);
        await images.ImportRootfsAsync(rootfs, Image, Ct);
        return d;
    }

    internal static PodSandboxConfig Pod(DaemonHarness d, string name = "web") => new()
    {
        Metadata = new PodSandboxMetadata { Name = name, Uid = "uid-" + name, Namespace = "test", Attempt = 1 },
        Hostname = name,
        LogDirectory = d.Dir.CreateDirectory("logs", name),
        Linux = new LinuxPodSandboxConfig(),
    };

    internal static ContainerConfig Container(string name, params string[] script) => new()
    {
        Metadata = new ContainerMetadata { Name = name },
        Image = new ImageSpec { Image = Image },
        Command = { "/bin/busybox", "sh", "-c", string.Join("; ", script) },
        LogPath = name + ".log",
        Linux = new LinuxContainerConfig(),
    };

    internal static async Task<(string Pod, string Container)> RunAsync(DaemonHarness d, PodSandboxConfig pod, ContainerConfig container, string handler = "")
    {
        var p = await d.Runtime.RunPodSandboxAsync(new RunPodSandboxRequest { Config = pod, RuntimeHandler = handler }, cancellationToken: Ct);
        var c = await d.Runtime.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = p.PodSandboxId, Config = container, SandboxConfig = pod }, cancellationToken: Ct);
        await d.Runtime.StartContainerAsync(new StartContainerRequest { ContainerId = c.ContainerId }, cancellationToken: Ct);
        return (p.PodSandboxId, c.ContainerId);
    }

    /// <summary>The container's status once it exited, or as it is after <paramref name="timeout"/> (callers assert on it).</summary>
    internal static Task<ContainerStatus> WaitExitedAsync(DaemonHarness d, string id, TimeSpan timeout) =>
        Eventually.LastAsync(
            async () => (await d.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = id }, cancellationToken: Ct)).Status,
            s => s.State == ContainerState.ContainerExited, timeout, Ct);

    [Theory]
    [InlineData("runc")]
    [InlineData("crun")]
    public async Task A_pods_ip_answers_from_the_host_over_the_bridge(string handler)
    {
        Requires.Handler(handler);
        await using var d = await StartWithImageAsync();
        var pod = Pod(d);
        var (podId, _) = await RunAsync(d, pod, Container("httpd",
            "mkdir -p /tmp/www", "echo hello-from-pod > /tmp/www/index.html", "exec /bin/busybox httpd -f -p 8080 -h /tmp/www"), handler);

        var status = await d.Runtime.PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = podId }, cancellationToken: Ct);
        var ip = status.Status.Network.Ip;
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
        var body = await Eventually.ServedAsync(http, new Uri($"http://{ip}:8080/index.html"), ct: Ct);

        Assert.StartsWith("10.124.", ip, StringComparison.Ordinal);
        Assert.Equal("hello-from-pod\n", body);
        Assert.Equal(handler, status.Status.RuntimeHandler);
    }

    [Theory]
    [InlineData("runc")]
    [InlineData("crun")]
    public async Task Env_user_workdir_and_read_only_rootfs_are_what_the_config_says(string handler)
    {
        Requires.Handler(handler);
        await using var d = await StartWithImageAsync();
        var config = Container("probe", "echo uid=$(id -u) gid=$(id -g)", "echo cwd=$(pwd)", "echo greeting=$GREETING", "touch /probe 2>/dev/null && echo rootfs=rw || echo rootfs=ro", "echo host=$(hostname)");
        config.Envs.Add(new KeyValue { Key = "GREETING", Value = "hello" });
        config.WorkingDir = "/tmp";
        config.Linux.SecurityContext = new LinuxContainerSecurityContext { RunAsUser = new Int64Value { Value = 1000 }, ReadonlyRootfs = true };
        var pod = Pod(d, "probe");
        var (_, id) = await RunAsync(d, pod, config, handler);

        var status = await WaitExitedAsync(d, id, TimeSpan.FromSeconds(20));
        var log = await File.ReadAllTextAsync(status.LogPath, Ct);

        Assert.Equal(0, status.ExitCode);
        Assert.Equal("Completed", status.Reason);
        Assert.Contains("stdout F uid=1000 gid=1000\n", log, StringComparison.Ordinal);
        Assert.Contains("stdout F cwd=/tmp\n", log, StringComparison.Ordinal);
        Assert.Contains("stdout F greeting=hello\n", log, StringComparison.Ordinal);
        Assert.Contains("stdout F rootfs=ro\n", log, StringComparison.Ordinal);
        Assert.Contains("stdout F host=probe\n", log, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("runc")]
    [InlineData("crun")]
    public async Task A_failing_command_reports_its_exit_code_and_error(string handler)
    {
        Requires.Handler(handler);
        await using var d = await StartWithImageAsync();
        var (_, id) = await RunAsync(d, Pod(d, "fail"), Container("fail", "exit 7"), handler);

        var status = await WaitExitedAsync(d, id, TimeSpan.FromSeconds(20));

        Assert.Equal(7, status.ExitCode);
        Assert.Equal("Error", status.Reason);
        Assert.True(status.FinishedAt >= status.StartedAt);
    }

    [Theory]
    [InlineData("runc")]
    [InlineData("crun")]
    public async Task A_stop_timeout_escalates_to_sigkill_and_stop_is_idempotent(string handler)
    {
        Requires.Handler(handler);
        await using var d = await StartWithImageAsync();
        var (_, id) = await RunAsync(d, Pod(d, "stubborn"), Container("stubborn", "trap '' TERM", "while true; do sleep 1; done"), handler);
        var info = await d.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = id, Verbose = true }, cancellationToken: Ct);
        var pid = System.Text.Json.JsonDocument.Parse(info.Info["info"]).RootElement.GetProperty("pid").GetInt32();
        await Eventually.UntilAsync(() => IgnoresSigterm(pid), $"the shell (pid {pid}) to run its trap '' TERM", ct: Ct);

        var clock = Stopwatch.StartNew();
        await d.Runtime.StopContainerAsync(new StopContainerRequest { ContainerId = id, Timeout = 1 }, cancellationToken: Ct);
        clock.Stop();
        await d.Runtime.StopContainerAsync(new StopContainerRequest { ContainerId = id, Timeout = 1 }, cancellationToken: Ct);
        var status = (await d.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = id }, cancellationToken: Ct)).Status;

        Assert.Equal(ContainerState.ContainerExited, status.State);
        Assert.Equal(137, status.ExitCode);
        Assert.True(clock.Elapsed >= TimeSpan.FromSeconds(1), $"stopped after {clock.Elapsed}");
    }

    /// <summary>Whether the process ignores SIGTERM (bit 15 of SigIgn in /proc/PID/status).</summary>
    private static bool IgnoresSigterm(int pid) =>
        File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("SigIgn:", StringComparison.Ordinal)) is var line
        && (ulong.Parse(line["SigIgn:".Length..].Trim(), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture) & (1UL << 14)) != 0;

    [Theory]
    [InlineData("runc")]
    [InlineData("crun")]
    public async Task A_container_over_its_memory_limit_is_oom_killed(string handler)
    {
        Requires.Handler(handler);
        await using var d = await StartWithImageAsync();
        var config = Container("hog", "x=$(head -c 200000000 /dev/zero | tr '\\0' a)", "echo survived");
        config.Linux.Resources = new LinuxContainerResources { MemoryLimitInBytes = 32 * 1024 * 1024 };
        var (_, id) = await RunAsync(d, Pod(d, "hog"), config, handler);

        var status = await WaitExitedAsync(d, id, TimeSpan.FromSeconds(30));

        Assert.Equal(ContainerState.ContainerExited, status.State);
        Assert.Equal("OOMKilled", status.Reason);
    }

    [Fact]
    public async Task Create_without_the_image_or_in_a_missing_pod_fails_clearly()
    {
        await using var d = await StartWithImageAsync();
        var pod = Pod(d, "missing");
        var p = await d.Runtime.RunPodSandboxAsync(new RunPodSandboxRequest { Config = pod }, cancellationToken: Ct);
        var config = Container("x", "true");
        config.Image.Image = "localhost/not-pulled:v1";

        var noImage = await Assert.ThrowsAsync<RpcException>(() => d.Runtime.CreateContainerAsync(
            new CreateContainerRequest { PodSandboxId = p.PodSandboxId, Config = config, SandboxConfig = pod }, cancellationToken: Ct).ResponseAsync);
        var noPod = await Assert.ThrowsAsync<RpcException>(() => d.Runtime.CreateContainerAsync(
            new CreateContainerRequest { PodSandboxId = "nonexistent", Config = Container("y", "true"), SandboxConfig = pod }, cancellationToken: Ct).ResponseAsync);

        Assert.Equal(StatusCode.NotFound, noImage.StatusCode);
        Assert.Contains("localhost/not-pulled:v1 is not present", noImage.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.NotFound, noPod.StatusCode);
        Assert.Empty((await d.Runtime.ListContainersAsync(new ListContainersRequest(), cancellationToken: Ct)).Containers);
    }

    [Fact]
    public async Task Lists_filter_by_state_pod_and_label()
    {
        await using var d = await StartWithImageAsync();
        var pod = Pod(d, "lists");
        pod.Labels["app"] = "lists";
        var running = Container("running", "sleep 60");
        running.Labels["tier"] = "a";
        var (podId, runningId) = await RunAsync(d, pod, running);
        var done = await d.Runtime.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = podId, Config = Container("done", "true"), SandboxConfig = pod }, cancellationToken: Ct);

        var onlyRunning = await d.Runtime.ListContainersAsync(new ListContainersRequest { Filter = new ContainerFilter { State = new ContainerStateValue { State = ContainerState.ContainerRunning } } }, cancellationToken: Ct);
        var byLabel = await d.Runtime.ListContainersAsync(new ListContainersRequest { Filter = new ContainerFilter { LabelSelector = { ["tier"] = "a" } } }, cancellationToken: Ct);
        var podsByLabel = await d.Runtime.ListPodSandboxAsync(new ListPodSandboxRequest { Filter = new PodSandboxFilter { LabelSelector = { ["app"] = "lists" } } }, cancellationToken: Ct);
        var podsByOther = await d.Runtime.ListPodSandboxAsync(new ListPodSandboxRequest { Filter = new PodSandboxFilter { LabelSelector = { ["app"] = "other" } } }, cancellationToken: Ct);

        Assert.Equal([runningId], onlyRunning.Containers.Select(c => c.Id));
        Assert.Equal([runningId], byLabel.Containers.Select(c => c.Id));
        Assert.Equal([podId], podsByLabel.Items.Select(p => p.Id));
        Assert.Empty(podsByOther.Items);
        Assert.NotEqual(runningId, done.ContainerId);
    }

    [Theory]
    [InlineData("runc")]
    [InlineData("crun")]
    public async Task Fifty_create_remove_cycles_leave_no_mounts_netns_files_or_conmon_processes(string handler)
    {
        Requires.Handler(handler);
        await using var d = await StartWithImageAsync();
        var linux = new Crest.Linux.LinuxSyscalls();
        var parent = "crest-leak-" + Guid.NewGuid().ToString("N")[..8];
        for (var i = 0; i < 50; i++)
        {
            var pod = Pod(d, $"cycle{i}");
            pod.Linux.CgroupParent = parent;
            var (podId, id) = await RunAsync(d, pod, Container("c", "sleep 30"), handler);
            await d.Runtime.RemoveContainerAsync(new RemoveContainerRequest { ContainerId = id }, cancellationToken: Ct);
            await d.Runtime.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = podId }, cancellationToken: Ct);
            await d.Runtime.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = podId }, cancellationToken: Ct);
        }

        var paths = d.Daemon.Config.Paths;
        Assert.Empty(linux.MountsUnder(paths.Root));
        Assert.Empty(linux.MountsUnder(paths.State));
        Assert.Empty(Directory.EnumerateFiles(Path.Combine(paths.State, "netns")));
        Assert.Empty(Directory.EnumerateDirectories(paths.Containers));
        Assert.Empty(Directory.EnumerateDirectories(Path.Combine(paths.State, "sandboxes")));
        Assert.DoesNotContain(Process.GetProcessesByName("conmon"), p => CommandLineOf(p.Id).Contains(paths.State, StringComparison.Ordinal));
        // Every hierarchy that has the pods' parent (v1 controllers, the unified one, or a pure v2 root) must hold
        // no container or pod cgroup under it; the empty parents are removed afterwards.
        var parents = Directory.EnumerateDirectories("/sys/fs/cgroup").Append("/sys/fs/cgroup")
            .Select(h => Path.Combine(h, parent)).Where(Directory.Exists).ToList();
        Assert.NotEmpty(parents);
        foreach (var dir in parents)
        {
            Assert.False(Directory.EnumerateDirectories(dir).Any(), $"cgroups are left under {dir}");
            Directory.Delete(dir);
        }
        Assert.Empty((await d.Runtime.ListPodSandboxAsync(new ListPodSandboxRequest(), cancellationToken: Ct)).Items);
    }

    /// <summary>A process's command line, or empty when it ended meanwhile (another test's conmon may).</summary>
    private static string CommandLineOf(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cmdline");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return "";
        }
    }
}
