using System.Text.RegularExpressions;
using Crest.Core;
using Crest.TestKit;
using Runtime.V1;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

/// <summary>
/// crestd killed (SIGKILL) at the crash points of the pod and container RPCs (<see cref="CrashPoints"/>), then started
/// again on the same roots. After the restart every object is one the CRI can act on (a pod READY or NOTREADY; a container
/// RUNNING, CREATED or EXITED with a reason; or gone), nothing is left paused, nothing crestd does not report holds a
/// mount, a netns file, a cgroup, an IP lease, a runc container or a conmon process, and the interrupted call works when
/// made again.
/// </summary>
public partial class CrashPointTests
{
    private const string CniNetwork = "crest-test"; // CniFixture.WriteBridgeConflist's default network name

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static Dictionary<string, string> Armed(string point) => new() { [CrashPoints.Variable] = point };

    private static void RequireTools()
    {
        Requires.Root();
        Requires.Binary("conmon");
        Requires.Binary("runc");
    }

    [Theory]
    [InlineData(CrashPoints.SandboxNetnsMade)]
    [InlineData(CrashPoints.SandboxCniAdded)]
    [InlineData(CrashPoints.SandboxInfraStarted)]
    public async Task Crestd_killed_inside_RunPodSandbox_leaves_no_half_made_pod_and_the_pod_runs_when_asked_again(string point)
    {
        RequireTools();
        using var dir = new TempDir("crest-e2e-cpr");
        var crestd = await CrestdProcess.StartReadyAsync(dir, environment: Armed(point));
        try
        {
            string[] r = ["-r", crestd.Endpoint];
            var podConfig = await WritePodAsync(dir, "crashed", "uid-crashed");
            var failed = await Binaries.RunCrestAsync([.. r, "runp", podConfig]);
            Assert.NotEqual(0, failed.ExitCode);
            var leasesAtCrash = 0;
            (crestd, var touched) = await RestartAfterCrashAsync(dir, crestd, ids => leasesAtCrash = LeasesOf(ids).Count);

            await using var pods = new OwnedPods(r);
            // The crash left a half-made pod behind (so the checks below look at something), and the restart undid it.
            Assert.NotEmpty(touched);
            Assert.Equal(point == CrashPoints.SandboxNetnsMade ? 0 : 1, leasesAtCrash);
            Assert.Equal("", await RunAsync([.. r, "pods", "-q"]));
            await AssertNothingLeakedAsync(dir, crestd, touched);

            var podId = await pods.RunAsync(podConfig);
            Assert.Equal("SANDBOX_READY", await PodStateAsync(crestd, podId));
        }
        finally
        {
            await crestd.DisposeAsync();
        }
    }

    [Fact]
    public async Task Crestd_killed_inside_CreateContainer_leaves_no_half_made_container_and_the_create_works_again()
    {
        RequireTools();
        using var dir = new TempDir("crest-e2e-cpc");
        var crestd = await CrestdProcess.StartReadyAsync(dir, environment: Armed(CrashPoints.ContainerRootfsMounted));
        try
        {
            string[] r = ["-r", crestd.Endpoint];
            await ImportBusyboxAsync(dir, r);
            var podConfig = await WritePodAsync(dir, "crashed", "uid-crashed");
            var counter = await CounterWorkload.WriteConfigAsync(dir, "localhost/e2e/busybox:v1");
            await using var pods = new OwnedPods(r);
            var podId = await pods.RunAsync(podConfig);

            var failed = await Binaries.RunCrestAsync([.. r, "create", podId, counter, podConfig]);
            Assert.NotEqual(0, failed.ExitCode);
            (crestd, var touched) = await RestartAfterCrashAsync(dir, crestd);

            Assert.Equal("SANDBOX_READY", await PodStateAsync(crestd, podId));
            Assert.Contains(touched, id => id != podId); // the half-made container left traces, which the restart removed
            Assert.Equal("", await RunAsync([.. r, "ps", "-a", "-q"]));
            await AssertNothingLeakedAsync(dir, crestd, touched);

            var id = await RunAsync([.. r, "create", podId, counter, podConfig]);
            await RunAsync([.. r, "start", id]);
            await CountPassesAsync(dir.Combine("logs-crashed", "counter.log"), 2, "the container created again after the crash does not run");
        }
        finally
        {
            await crestd.DisposeAsync();
        }
    }

    [Fact]
    public async Task Crestd_killed_inside_StartContainer_after_runc_create_leaves_a_created_container_that_starts_once()
    {
        RequireTools();
        using var dir = new TempDir("crest-e2e-cpr");
        var crestd = await CrestdProcess.StartReadyAsync(dir, environment: Armed(CrashPoints.ContainerRuncCreated));
        try
        {
            string[] r = ["-r", crestd.Endpoint];
            await ImportBusyboxAsync(dir, r);
            var podConfig = await WritePodAsync(dir, "crashed", "uid-crashed");
            var counter = await CounterWorkload.WriteConfigAsync(dir, "localhost/e2e/busybox:v1");
            await using var pods = new OwnedPods(r);
            var podId = await pods.RunAsync(podConfig);
            var id = await RunAsync([.. r, "create", podId, counter, podConfig]);

            var failed = await Binaries.RunCrestAsync([.. r, "start", id]);
            Assert.NotEqual(0, failed.ExitCode);
            (crestd, var touched) = await RestartAfterCrashAsync(dir, crestd);

            // The process runc created is adopted, not made twice: the container is still CREATED and starts once.
            Assert.Equal("CONTAINER_CREATED", await StateAsync(r, id));
            await RunAsync([.. r, "start", id]);
            await CountPassesAsync(dir.Combine("logs-crashed", "counter.log"), 2, "the container started after the crash does not run");
            await RunAsync([.. r, "stop", id]);
            Assert.Equal("CONTAINER_EXITED", await StateAsync(r, id));
            await AssertNothingLeakedAsync(dir, crestd, touched);
        }
        finally
        {
            await crestd.DisposeAsync();
        }
    }

    [Fact]
    public async Task Crestd_killed_inside_StartContainer_after_runc_start_leaves_the_container_running_and_adopted()
    {
        RequireTools();
        using var dir = new TempDir("crest-e2e-cpt");
        var crestd = await CrestdProcess.StartReadyAsync(dir, environment: Armed(CrashPoints.ContainerStartedUnrecorded));
        try
        {
            string[] r = ["-r", crestd.Endpoint];
            await ImportBusyboxAsync(dir, r);
            var podConfig = await WritePodAsync(dir, "crashed", "uid-crashed");
            var counter = await CounterWorkload.WriteConfigAsync(dir, "localhost/e2e/busybox:v1");
            await using var pods = new OwnedPods(r);
            var podId = await pods.RunAsync(podConfig);
            var id = await RunAsync([.. r, "create", podId, counter, podConfig]);

            var failed = await Binaries.RunCrestAsync([.. r, "start", id]);
            Assert.NotEqual(0, failed.ExitCode);
            (crestd, var touched) = await RestartAfterCrashAsync(dir, crestd);

            Assert.Equal("CONTAINER_RUNNING", await StateAsync(r, id));
            await AssertNothingLeakedAsync(dir, crestd, touched);
            var log = dir.Combine("logs-crashed", "counter.log");
            var atRestart = LastCount(await ReadLogAsync(log));
            await CountPassesAsync(log, atRestart + 2, "the adopted counter does not count");
            // Started once: a second StartContainer is refused rather than starting it again.
            Assert.NotEqual(0, (await Binaries.RunCrestAsync([.. r, "start", id])).ExitCode);
            await RunAsync([.. r, "stop", id]);
            Assert.Equal("CONTAINER_EXITED", await StateAsync(r, id));
            await AssertNothingLeakedAsync(dir, crestd, touched);
        }
        finally
        {
            await crestd.DisposeAsync();
        }
    }

    [Theory]
    [InlineData(CrashPoints.PodStopContainersStopped, "stopp")]
    [InlineData(CrashPoints.PodStopNetworkDeleted, "stopp")]
    [InlineData(CrashPoints.PodRemoveContainersRemoved, "rmp")]
    public async Task Crestd_killed_inside_StopPodSandbox_or_RemovePodSandbox_leaves_a_pod_the_retry_finishes(string point, string verb)
    {
        RequireTools();
        using var dir = new TempDir("crest-e2e-cps");
        var crestd = await CrestdProcess.StartReadyAsync(dir, environment: Armed(point));
        try
        {
            string[] r = ["-r", crestd.Endpoint];
            await ImportBusyboxAsync(dir, r);
            var podConfig = await WritePodAsync(dir, "crashed", "uid-crashed");
            var counter = await CounterWorkload.WriteConfigAsync(dir, "localhost/e2e/busybox:v1");
            await using var pods = new OwnedPods(r);
            var podId = await pods.RunAsync(podConfig);
            var id = await RunAsync([.. r, "create", podId, counter, podConfig]);
            await RunAsync([.. r, "start", id]);
            if (verb == "rmp")
            {
                await RunAsync([.. r, "stopp", podId]); // as the kubelet does before it removes
            }

            var failed = await Binaries.RunCrestAsync([.. r, verb, podId]);
            Assert.NotEqual(0, failed.ExitCode);
            (crestd, var touched) = await RestartAfterCrashAsync(dir, crestd);
            await AssertNothingLeakedAsync(dir, crestd, touched);

            // The retry the kubelet makes finishes the job.
            await RunAsync([.. r, "stopp", podId]);
            Assert.Equal("SANDBOX_NOTREADY", await PodStateAsync(crestd, podId));
            Assert.False(File.Exists(dir.Combine("state", "netns", podId)), "a stopped pod keeps no network namespace");
            Assert.Empty(LeasesOf([podId]));
            await pods.RemoveAsync(podId);
            Assert.Equal("", await RunAsync([.. r, "pods", "-q"]));
            await AssertNothingLeakedAsync(dir, crestd, [podId, id]);
        }
        finally
        {
            await crestd.DisposeAsync();
        }
    }

    [Theory]
    [InlineData(CrashPoints.CheckpointFrozen)]
    [InlineData(CrashPoints.CheckpointArchiveWriting)]
    public async Task Crestd_killed_inside_CheckpointContainer_leaves_the_container_running_and_no_partial_archive(string point)
    {
        RequireTools();
        Requires.Binary("criu");
        using var dir = new TempDir("crest-e2e-cpk");
        // The images go to a tmpfs (a small container with an idle page cache would go to the page cache under auto),
        // so the test also checks that a restart unmounts what the crash left mounted.
        const string tmpfsWork = "[checkpoint]\nwork_in_memory = \"tmpfs\"";
        var crestd = await CrestdProcess.StartReadyAsync(dir, tmpfsWork, environment: Armed(point));
        try
        {
            string[] r = ["-r", crestd.Endpoint];
            await ImportBusyboxAsync(dir, r);
            var podConfig = await WritePodAsync(dir, "crashed", "uid-crashed");
            var counter = await CounterWorkload.WriteConfigAsync(dir, "localhost/e2e/busybox:v1");
            await using var pods = new OwnedPods(r);
            var podId = await pods.RunAsync(podConfig);
            var id = await RunAsync([.. r, "create", podId, counter, podConfig]);
            await RunAsync([.. r, "start", id]);
            var log = dir.Combine("logs-crashed", "counter.log");
            await CountPassesAsync(log, 2);
            var output = dir.CreateDirectory("out");
            var archive = Path.Combine(output, "counter.tar");

            var failed = await Binaries.RunCrestAsync([.. r, "checkpoint", "--export", archive, id]);
            Assert.NotEqual(0, failed.ExitCode);
            (crestd, var touched) = await RestartAfterCrashAsync(dir, crestd, extraConfig: tmpfsWork);

            Assert.Equal("CONTAINER_RUNNING", await StateAsync(r, id));
            await AssertNothingLeakedAsync(dir, crestd, touched);
            var atRestart = LastCount(await ReadLogAsync(log));
            await CountPassesAsync(log, atRestart + 2, "the counter did not go on after crestd restarted: it was left frozen");
            Assert.Empty(Directory.EnumerateFileSystemEntries(output));
            Assert.Empty(Directory.EnumerateDirectories(dir.Combine("root", "containers"), "checkpoint-work-*", SearchOption.AllDirectories));
            // The images went to a tmpfs on the work directory ([checkpoint] work_in_memory = tmpfs): unmounted too.
            Assert.DoesNotContain(MountPointsBelow(dir.Path), m => m.Contains("checkpoint-work-", StringComparison.Ordinal));

            await RunAsync([.. r, "checkpoint", "--export", archive, id]);
            Assert.True(File.Exists(archive), crestd.Log);
            Assert.Equal("CONTAINER_RUNNING", await StateAsync(r, id));
            Assert.Contains("pages written to memory (tmpfs)", await crestd.LoggedAsync("pages written to memory (tmpfs)"), StringComparison.Ordinal);
            Assert.DoesNotContain(MountPointsBelow(dir.Path), m => m.Contains("checkpoint-work-", StringComparison.Ordinal));
        }
        finally
        {
            await crestd.DisposeAsync();
        }
    }

    [Theory]
    [InlineData(CrashPoints.ImagePullIngesting, "pull")]
    [InlineData(CrashPoints.ImagePullUnpacked, "pull")]
    [InlineData(CrashPoints.ImageGcCollecting, "rmi")]
    public async Task Crestd_killed_inside_PullImage_or_image_GC_leaves_no_half_image_and_no_unreferenced_content(string point, string verb)
    {
        Requires.Root();
        await using var registry = await LocalRegistry.StartAsync();
        using var layout = new TempDir("crest-layout");
        TestImages.WriteLayout(layout.Path, TestImages.StandardLayers(), "v1");
        var reference = $"{registry.Host}/e2e/busybox:v1";
        await TestImages.PushAsync(layout.Path, "v1", reference);
        using var dir = new TempDir("crest-e2e-cpi");
        var crestd = await CrestdProcess.StartReadyAsync(dir, environment: verb == "pull" ? Armed(point) : null);
        try
        {
            string[] r = ["-r", crestd.Endpoint];
            if (verb == "rmi")
            {
                await RunAsync([.. r, "pull", reference]);
                await crestd.StopAsync();
                await crestd.DisposeAsync();
                crestd = await CrestdProcess.StartReadyAsync(dir, environment: Armed(point));
            }

            var content = dir.Combine("root", "content");
            var snapshots = dir.Combine("root", "snapshots");
            var failed = await Binaries.RunCrestAsync([.. r, verb, reference]);
            Assert.NotEqual(0, failed.ExitCode);
            var leftAtCrash = 0;
            (crestd, _) = await RestartAfterCrashAsync(dir, crestd, _ => leftAtCrash = Entries(content).Count + Entries(snapshots).Count);

            // The crash left content behind (so the checks look at something); the restart kept none of it without an image.
            Assert.True(leftAtCrash > 0, "the crash point left nothing on disk to check");
            Assert.Equal("", await RunAsync([.. r, "images", "-q"]));
            Assert.True(Entries(content).Count + Entries(snapshots).Count == 0,
                $"content or snapshots that no image references were kept: {string.Join(", ", Entries(content).Concat(Entries(snapshots)))}\n{crestd.Log}");

            await RunAsync([.. r, "pull", reference]);
            Assert.NotEqual("", await RunAsync([.. r, "images", "-q"]));
            await RunAsync([.. r, "rmi", reference]);
            Assert.Empty(Entries(content).Concat(Entries(snapshots)));
        }
        finally
        {
            await crestd.DisposeAsync();
        }
    }

    [Fact]
    public async Task Crestd_killed_while_CreateContainer_unpacks_a_checkpoint_leaves_no_staging_and_no_container_and_the_restore_works_again()
    {
        RequireTools();
        Requires.Binary("criu");
        const string restoreOn = "[restore]\nvia_create = true\n";
        using var dir = new TempDir("crest-e2e-cpu");
        var crestd = await CrestdProcess.StartReadyAsync(dir, restoreOn);
        try
        {
            string[] r = ["-r", crestd.Endpoint];
            await ImportBusyboxAsync(dir, r);
            var podConfig = await WritePodAsync(dir, "crashed", "uid-crashed");
            var counter = await CounterWorkload.WriteConfigAsync(dir, "localhost/e2e/busybox:v1");
            await using var pods = new OwnedPods(r);
            var podId = await pods.RunAsync(podConfig);
            var id = await RunAsync([.. r, "create", podId, counter, podConfig]);
            await RunAsync([.. r, "start", id]);
            var log = dir.Combine("logs-crashed", "counter.log");
            await CountPassesAsync(log, 2);
            var archive = dir.Combine("counter.tar");
            await RunAsync([.. r, "checkpoint", "--export", archive, id]);
            await RunAsync([.. r, "rm", id]);
            var restoreConfig = dir.Combine("restore.json");
            await File.WriteAllTextAsync(restoreConfig, $$"""
                {"metadata": {"name": "counter", "attempt": 2}, "image": {"image": "{{archive}}"}, "log_path": "restored.log", "linux": {} }
                """, Ct);
            await crestd.StopAsync();
            await crestd.DisposeAsync();
            crestd = await CrestdProcess.StartReadyAsync(dir, restoreOn, Armed(CrashPoints.RestoreStagingUnpacked));

            var failed = await Binaries.RunCrestAsync([.. r, "create", podId, restoreConfig, podConfig]);
            Assert.NotEqual(0, failed.ExitCode);
            var staged = 0;
            (crestd, var touched) = await RestartAfterCrashAsync(dir, crestd, _ => staged = Directory.EnumerateFileSystemEntries(dir.Combine("root", "restores")).Count(), restoreOn);

            Assert.Equal(1, staged);
            Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Combine("root", "restores")));
            Assert.Equal("", await RunAsync([.. r, "ps", "-a", "-q"]));
            await AssertNothingLeakedAsync(dir, crestd, touched);

            var restored = await RunAsync([.. r, "create", podId, restoreConfig, podConfig]);
            var restoredLog = dir.Combine("logs-crashed", "restored.log");
            var atCheckpoint = LastCount(await ReadLogAsync(restoredLog)); // the checkpoint's log, copied at create
            await RunAsync([.. r, "start", restored]);
            await CountPassesAsync(restoredLog, atCheckpoint + 2, "the container restored after the crash does not go on counting");
        }
        finally
        {
            await crestd.DisposeAsync();
        }
    }

    /// <summary>The files and snapshot directories below a content store or snapshotter root (its empty skeleton aside).</summary>
    private static List<string> Entries(string root) =>
        Directory.Exists(root) ? Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories).Concat(Directory.EnumerateDirectories(root, "*", SearchOption.TopDirectoryOnly).Where(d => root.EndsWith("snapshots", StringComparison.Ordinal))).ToList() : [];

    /// <summary>
    /// Waits for the armed crestd to die by SIGKILL and starts crestd again on the same roots; returns it and every
    /// object id the dead crestd left traces of.
    /// </summary>
    private static async Task<(CrestdProcess Crestd, IReadOnlyCollection<string> Touched)> RestartAfterCrashAsync(TempDir dir, CrestdProcess crashed, Action<IReadOnlyCollection<string>>? beforeRestart = null, string extraConfig = "")
    {
        using (var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct))
        {
            cts.CancelAfter(TimeSpan.FromSeconds(30));
            await crashed.Process.WaitForExitAsync(cts.Token);
        }

        Assert.True(crashed.Process.ExitCode == 137, $"crestd was to die by SIGKILL at the crash point; it exited {crashed.Process.ExitCode}: {crashed.Log}");
        var touched = Touched(dir);
        beforeRestart?.Invoke(touched);
        await crashed.DisposeAsync();
        return (await CrestdProcess.StartReadyAsync(dir, extraConfig), touched);
    }

    /// <summary>Every object id (64 hex digits) with a directory, a file, a runc container or a conmon process under the test's roots.</summary>
    private static HashSet<string> Touched(TempDir dir)
    {
        var ids = new HashSet<string>(StringComparer.Ordinal);
        foreach (var parent in new[] { dir.Combine("root", "containers"), dir.Combine("state", "sandboxes"), dir.Combine("state", "containers"), dir.Combine("state", "netns"), dir.Combine("state", "runtime", "runc"), dir.Combine("state", "exits") })
        {
            if (Directory.Exists(parent))
            {
                ids.UnionWith(Directory.EnumerateFileSystemEntries(parent).Select(Path.GetFileName).Where(n => n is not null && ObjectId().IsMatch(n))!);
            }
        }

        ids.UnionWith(Conmons(dir).Select(c => c.Id));
        return ids;
    }

    /// <summary>
    /// Every pod and container crestd reports is one the CRI can act on, none is paused, and nothing that crestd does not
    /// report (among <paramref name="touched"/> and everything under the test's roots) holds a mount, a netns file, a
    /// runc container, a conmon process, a cgroup or an IP lease.
    /// </summary>
    private static async Task AssertNothingLeakedAsync(TempDir dir, CrestdProcess crestd, IReadOnlyCollection<string> touched)
    {
        using var channel = UnixGrpc.Channel(crestd.Socket);
        var client = new RuntimeService.RuntimeServiceClient(channel);
        var pods = (await client.ListPodSandboxAsync(new ListPodSandboxRequest(), cancellationToken: Ct)).Items;
        var containers = (await client.ListContainersAsync(new ListContainersRequest(), cancellationToken: Ct)).Containers;
        var reported = pods.Select(p => p.Id).Concat(containers.Select(c => c.Id)).ToHashSet(StringComparer.Ordinal);
        var problems = new List<string>();
        var runcRoot = dir.Combine("state", "runtime", "runc");
        foreach (var c in containers)
        {
            var status = (await client.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = c.Id }, cancellationToken: Ct)).Status;
            if (status.State == Runtime.V1.ContainerState.ContainerExited && status.Reason.Length == 0)
            {
                problems.Add($"container {c.Id} is EXITED without a reason");
            }
            else if (status.State == Runtime.V1.ContainerState.ContainerUnknown)
            {
                problems.Add($"container {c.Id} is UNKNOWN");
            }

            if (status.State == Runtime.V1.ContainerState.ContainerRunning && await RuncStatusAsync(runcRoot, c.Id) is "paused")
            {
                problems.Add($"container {c.Id} is reported RUNNING but is paused");
            }
        }

        var stray = touched.Where(id => !reported.Contains(id)).ToList();
        foreach (var mountPoint in MountPointsBelow(dir.Path))
        {
            if (!reported.Any(id => mountPoint.Contains(id, StringComparison.Ordinal)))
            {
                problems.Add($"mount {mountPoint} belongs to no pod or container crestd reports");
            }
        }

        var netnsDir = dir.Combine("state", "netns");
        foreach (var netns in Directory.Exists(netnsDir) ? Directory.EnumerateFileSystemEntries(netnsDir) : [])
        {
            if (!pods.Any(p => p.Id == Path.GetFileName(netns)))
            {
                problems.Add($"network namespace file {netns} belongs to no pod crestd reports");
            }
        }

        foreach (var id in await RuncListAsync(runcRoot))
        {
            if (!reported.Contains(id))
            {
                problems.Add($"runc still knows container {id}, which crestd does not report");
            }
        }

        foreach (var (pid, id) in Conmons(dir))
        {
            if (!reported.Contains(id))
            {
                problems.Add($"conmon {pid} still monitors {id}, which crestd does not report");
            }
        }

        foreach (var id in stray)
        {
            foreach (var cgroup in CgroupsOf(id))
            {
                problems.Add($"cgroup {cgroup} of {id}, which crestd does not report, is still there");
            }
        }

        foreach (var lease in LeasesOf(stray))
        {
            problems.Add($"IP lease {lease} of a pod crestd does not report is still held");
        }

        Assert.True(problems.Count == 0, string.Join("\n", problems) + "\n--- crestd log ---\n" + crestd.Log);
    }

    private static async Task<string> PodStateAsync(CrestdProcess crestd, string podId)
    {
        using var channel = UnixGrpc.Channel(crestd.Socket);
        var status = await new RuntimeService.RuntimeServiceClient(channel).PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = podId }, cancellationToken: Ct);
        return status.Status.State == PodSandboxState.SandboxReady ? "SANDBOX_READY" : "SANDBOX_NOTREADY";
    }

    private static List<string> MountPointsBelow(string root) =>
        File.ReadLines("/proc/self/mountinfo")
            .Select(l => l.Split(' ')[4].Replace("\\040", " ", StringComparison.Ordinal))
            .Where(m => m.StartsWith(root + "/", StringComparison.Ordinal))
            .ToList();

    /// <summary>The conmon processes whose command line names the test's roots, with the container id each monitors (-c).</summary>
    private static List<(int Pid, string Id)> Conmons(TempDir dir)
    {
        var found = new List<(int, string)>();
        foreach (var proc in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(proc), out var pid))
            {
                continue;
            }

            string[] argv;
            try
            {
                argv = File.ReadAllText(Path.Combine(proc, "cmdline")).Split('\0');
            }
            catch (IOException)
            {
                continue; // gone meanwhile
            }
            catch (UnauthorizedAccessException)
            {
                continue;
            }

            var c = Array.IndexOf(argv, "-c");
            if (argv.Length > 0 && Path.GetFileName(argv[0]) == "conmon" && c >= 0 && c + 1 < argv.Length && argv.Any(a => a.Contains(dir.Path, StringComparison.Ordinal)))
            {
                found.Add((pid, argv[c + 1]));
            }
        }

        return found;
    }

    /// <summary>The cgroup directories of an object (cgroupsPath /crest/crest-ID, v2 or any v1 hierarchy).</summary>
    private static List<string> CgroupsOf(string id) =>
        new[] { "/sys/fs/cgroup" }.Concat(Directory.Exists("/sys/fs/cgroup") ? Directory.EnumerateDirectories("/sys/fs/cgroup") : [])
            .Select(h => Path.Combine(h, "crest", "crest-" + id))
            .Where(Directory.Exists)
            .ToList();

    /// <summary>host-local's lease files (one per address, holding the container id) of the test network that name one of <paramref name="ids"/>.</summary>
    private static List<string> LeasesOf(IReadOnlyCollection<string> ids)
    {
        var network = Path.Combine("/var/lib/cni/networks", CniNetwork);
        var leases = new List<string>();
        foreach (var file in Directory.Exists(network) ? Directory.EnumerateFiles(network) : [])
        {
            try
            {
                var holder = File.ReadAllText(file).Split('\n')[0].Trim();
                if (ids.Contains(holder))
                {
                    leases.Add(file);
                }
            }
            catch (IOException)
            {
                // released meanwhile
            }
        }

        return leases;
    }

    private static async Task<string?> RuncStatusAsync(string runcRoot, string id)
    {
        var (code, output) = await Tool("runc", "--root", runcRoot, "state", id);
        if (code != 0)
        {
            return null;
        }

        using var doc = System.Text.Json.JsonDocument.Parse(output);
        return doc.RootElement.GetProperty("status").GetString();
    }

    private static async Task<IReadOnlyList<string>> RuncListAsync(string runcRoot)
    {
        if (!Directory.Exists(runcRoot))
        {
            return [];
        }

        var (code, output) = await Tool("runc", "--root", runcRoot, "list", "-q");
        Assert.True(code == 0, output);
        return output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
    }

    [GeneratedRegex("^[0-9a-f]{64}$")]
    private static partial Regex ObjectId();
}
