using System.Text.Json;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;
using static Crest.E2ETests.MigrationTests;

namespace Crest.E2ETests;

// A whole pod, post-copy: each container's memory comes from a page server of its own on the source after the switch.
public sealed partial class PodMigrationTests
{
    private static readonly string[] MemoryWorkloads = ["memory", "memory2"];

    /// <summary>A pod of the two awk memory workloads (<see cref="MemoryWorkloads"/>) of <paramref name="bytes"/> each on A, once both count.</summary>
    private static Task<(string PodId, string[] Logs)> RunMemoryPodOnAAsync(TwoNodes nodes, string image, long bytes) =>
        RunPodOnAAsync(nodes, "podpost", MemoryWorkloads, (config, name) => WriteMemoryWorkloadConfigAsync(nodes, config, name, image, bytes));

    /// <summary>
    /// The page sources die while B fetches from them (SIGKILL to A's runc checkpoint --lazy-pages and their CRIUs, once
    /// B runs the pod): the migration fails naming the broken transfer, B's pod is gone, and A's pod runs on with every
    /// workload's memory whole, so exactly one copy of each runs.
    /// </summary>
    [Fact]
    public async Task A_post_copy_pod_whose_page_sources_die_is_undone_and_the_source_pod_runs_on_exactly_once()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("podpostfail");
        await RequirePostCopyAsync(nodes);
        var image = await RegistryBusyboxOnAAsync(nodes);
        // Large enough that the pages are still streaming when their sources are killed.
        const long bytes = 384L << 20;
        var (podId, logsA) = await RunMemoryPodOnAAsync(nodes, image, bytes);
        var podB = await WritePodAsync(nodes.B.Dir, "podpost", "uid-podpost-b");

        var rootA = nodes.A.Dir.Combine("root");
        var rootB = nodes.B.Dir.Combine("root");
        // Each of B's lazy-pages daemons is stopped as soon as its restore finished (the restore needs it running), so
        // that no transfer can finish before its source is killed (a background fetch of 384 MiB takes well under a
        // second); they go on once the sources are dead.
        using var holdDaemons = new CancellationTokenSource();
        var stopped = new System.Collections.Concurrent.ConcurrentDictionary<int, string>();
        var holding = Task.Run(async () =>
        {
            while (!holdDaemons.IsCancellationRequested)
            {
                foreach (var container in RestoredContainerDirs(rootB))
                {
                    // SIGSTOP straight away (no kill process to start): the background fetch must not finish first.
                    foreach (var pid in LazyPagesDaemons(container).Where(pid => stopped.TryAdd(pid, container)))
                    {
                        _ = Signal(pid, SigStop);
                    }
                }

                await Task.Delay(2, CancellationToken.None);
            }
        }, CancellationToken.None);
        Task<(int ExitCode, string Stdout, string Stderr)> migrating;
        try
        {
            migrating = MigratePodAsync(nodes, podId, podB, "--strategy", "post-copy");
            // Both of B's restores handed their processes over (they fault pages in), both daemons are held, and B runs the pod's containers.
            int RestoredOnB() => RestoredContainerDirs(rootB).Count;
            await Eventually.UntilAsync(async () => migrating.IsCompleted
                    || (RestoredOnB() == MemoryWorkloads.Length && stopped.Count == MemoryWorkloads.Length && (await RunAsync([.. nodes.B.R, "ps", "-q"])).Split('\n').Length == MemoryWorkloads.Length),
                "B's post-copy restores to finish, their lazy-pages daemons to be held and its containers to run", TimeSpan.FromSeconds(60), Ct);
            if (migrating.IsCompleted)
            {
                Assert.Fail("the migration ended before its page sources could be killed: " + (await migrating).Stderr);
            }

            var pageSources = ProcessesWith("checkpoint", "--lazy-pages", rootA);
            Assert.Equal(MemoryWorkloads.Length, pageSources.Count);
            foreach (var pid in pageSources)
            {
                // runc leads the process group of the CRIU it started.
                _ = await Tool("kill", "-KILL", "--", "-" + pid.ToString(System.Globalization.CultureInfo.InvariantCulture));
            }
        }
        finally
        {
            // Whatever happened above: nothing stays stopped (a daemon that exited meanwhile is not signalled again).
            await holdDaemons.CancelAsync();
            await holding;
            foreach (var pid in stopped.Keys)
            {
                _ = Signal(pid, SigCont);
            }
        }

        var migrated = await migrating;

        Assert.Equal(1, migrated.ExitCode);
        Assert.True(migrated.Stderr.Contains("broke", StringComparison.Ordinal), migrated.Stderr);
        Assert.True(migrated.Stderr.Contains("undone: the pod runs on", StringComparison.Ordinal), migrated.Stderr);
        Assert.Equal("", await RunAsync([.. nodes.B.R, "pods", "-q"]));
        Assert.Equal("", await RunAsync([.. nodes.B.R, "ps", "-a", "-q"]));
        Assert.Equal(podId, await RunAsync([.. nodes.A.R, "pods", "-q"]));
        foreach (var logA in logsA)
        {
            var before = LastCount(await File.ReadAllTextAsync(logA, Ct));
            var log = await Eventually.UntilAsync(() => ReadLogAsync(logA), l => LastCount(l) > before + 2,
                "each source workload to count on after the failed post-copy", describe: l => l[^Math.Min(400, l.Length)..], ct: Ct);
            Assert.All(log.Split('\n').Where(l => l.Contains("count", StringComparison.Ordinal)), l => Assert.EndsWith($" len {bytes} mid ok", l, StringComparison.Ordinal));
        }

        // One copy of each workload on this machine: the source's.
        Assert.Equal(MemoryWorkloads.Length, ProcessesWith("busybox", "awk", MemoryWorkloadTag(nodes)).Count);
        TestContext.Current.TestOutputHelper?.WriteLine(migrated.Stderr);
    }

    private const int SigStop = 19;

    private const int SigCont = 18;

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Signal(int pid, int signal);

    /// <summary>The container directories of a node whose CRIU restore finished.</summary>
    private static List<string> RestoredContainerDirs(string root)
    {
        var containers = Path.Combine(root, "containers");
        return Directory.Exists(containers)
            ? Directory.EnumerateDirectories(containers).Where(d =>
            {
                var log = Path.Combine(d, "bundle", "restore.log");
                try
                {
                    return File.Exists(log) && File.ReadAllText(log).Contains("Restore finished successfully", StringComparison.Ordinal);
                }
                catch (IOException)
                {
                    return false;
                }
            }).ToList()
            : [];
    }

    /// <summary>The <c>criu lazy-pages</c> daemons of a container (its directory in their command line).</summary>
    private static IEnumerable<int> LazyPagesDaemons(string containerDir) =>
        ProcessesWith("lazy-pages", containerDir + "/").Where(pid =>
        {
            try
            {
                var argv = File.ReadAllText($"/proc/{pid}/cmdline").Split('\0');
                return argv.Length > 1 && argv[1] == "lazy-pages";
            }
            catch (IOException)
            {
                return false;
            }
        });

    /// <summary>
    /// A pod of two awk workloads holding 48 MiB each moves post-copy: the pod checkpoint carries none of that memory,
    /// each restored container faults its own in from its own page server on A (over TLS), every line on B still sees
    /// its whole string, and nothing is left on A, not even a key pair.
    /// </summary>
    [Fact]
    public async Task A_pod_migrates_post_copy_with_each_containers_memory_from_its_own_page_server_and_arrives_whole()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("podpost");
        await RequirePostCopyAsync(nodes);
        var image = await RegistryBusyboxOnAAsync(nodes);
        const long bytes = 48L << 20;
        var (podId, logsA) = await RunMemoryPodOnAAsync(nodes, image, bytes);
        var podB = await WritePodAsync(nodes.B.Dir, "podpost", "uid-podpost-b");

        var migrated = await MigratePodAsync(nodes, podId, podB, "--strategy", "post-copy");

        Assert.True(migrated.ExitCode == 0, $"migrate pod post-copy failed ({migrated.ExitCode}): {migrated.Stderr}\nA: {nodes.A.Crestd.Log}\nB: {nodes.B.Crestd.Log}");
        using var report = JsonDocument.Parse(migrated.Stdout);
        var r = report.RootElement;
        Assert.Equal("post-copy", r.GetProperty("strategy").GetString());
        // The memory moved after the switch, not in it: the checkpoint is smaller than one workload's string.
        Assert.True(r.GetProperty("bytesDuringSwitch").GetInt64() < bytes, $"the pod checkpoint carried {r.GetProperty("bytesDuringSwitch")} bytes");
        Assert.True(r.GetProperty("bytesAfterSwitch").GetInt64() > 2 * bytes, $"only {r.GetProperty("bytesAfterSwitch")} bytes arrived after the switch");
        Assert.Contains("over TLS", migrated.Stderr, StringComparison.Ordinal);
        var moved = r.GetProperty("containers").EnumerateArray().ToDictionary(c => c.GetProperty("name").GetString()!, c => c.GetProperty("containerId").GetString()!);

        Assert.Equal("", await RunAsync([.. nodes.A.R, "ps", "-a", "-q"]));
        Assert.Equal("", await RunAsync([.. nodes.A.R, "pods", "-q"]));
        for (var i = 0; i < MemoryWorkloads.Length; i++)
        {
            Assert.Equal("CONTAINER_RUNNING", await StateAsync(nodes.B.R, moved[MemoryWorkloads[i]]));
            var lastOnA = LastCount(await File.ReadAllTextAsync(logsA[i], Ct));
            var logB = nodes.B.Dir.Combine("logs-podpost", MemoryWorkloads[i] + ".log");
            var log = await Eventually.UntilAsync(() => ReadLogAsync(logB), l => l.Contains($"count {lastOnA + 3} ", StringComparison.Ordinal),
                $"the migrated {MemoryWorkloads[i]} to count on", describe: l => l[^Math.Min(400, l.Length)..], ct: Ct);
            // Every line after the switch still reads its whole string: each page arrived, from its own container's source.
            var after = log.Split('\n').SkipWhile(l => !l.Contains($"count {lastOnA + 1} ", StringComparison.Ordinal)).Where(l => l.Contains("count", StringComparison.Ordinal)).ToList();
            Assert.NotEmpty(after);
            Assert.All(after, l => Assert.EndsWith($" len {bytes} mid ok", l, StringComparison.Ordinal));
        }

        // Two copies of the workload on this machine, both B's (one per container), and no key pair left on either node.
        Assert.Equal(2, ProcessesWith("busybox", "awk", MemoryWorkloadTag(nodes)).Count);
        await Eventually.UntilAsync(() => !PageTransferKeys(nodes.A).Any(), "A's page server key pairs to go with their page servers", ct: Ct);
        await Eventually.UntilAsync(() => !PageTransferKeys(nodes.B).Any(), "B's page client key pairs to go with their transfers", ct: Ct);
        TestContext.Current.TestOutputHelper?.WriteLine(
            $"pod post-copy, 2 x {bytes >> 20} MiB: downtime {r.GetProperty("downtimeMs")} ms, frozen {r.GetProperty("frozenMs")} ms, page transfer {r.GetProperty("pageTransferMs")} ms, "
            + $"{r.GetProperty("bytesDuringSwitch")} bytes during the switch, {r.GetProperty("bytesAfterSwitch")} after\n{migrated.Stderr}");
    }
}
