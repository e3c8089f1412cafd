using System.Diagnostics;
using Crest.TestKit;
using Runtime.V1;

namespace Crest.IntegrationTests;

/// <summary>
/// Locks are per object (issue 18, item 5): while CRIU dumps one container holding 512 MiB, CRI calls on other objects,
/// and reads of the container being dumped, go on. Checked on real runc, conmon, CRIU and CNI.
/// </summary>
public sealed class ConcurrencyTests
{
    private const long Hog = 512L << 20;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_slow_checkpoint_of_one_container_does_not_hold_up_calls_on_other_objects()
    {
        await using var d = await PodTests.StartWithImageAsync();
        Requires.Binary("criu");
        var big = PodTests.Pod(d, "big");
        // busybox awk holds a string of that size: touched memory CRIU has to write out.
        var hogConfig = PodTests.Container("hog");
        hogConfig.Command.Clear();
        hogConfig.Command.Add(["/bin/busybox", "awk", $"BEGIN{{s=sprintf(\"%{Hog}s\",\"\"); print \"ready\"; fflush(); system(\"exec /bin/busybox sleep 1000000\")}}"]);
        var (_, hog) = await PodTests.RunAsync(d, big, hogConfig);
        var hogLog = Path.Combine(big.LogDirectory, "hog.log");
        await Eventually.UntilAsync(() => Task.FromResult(File.Exists(hogLog) ? File.ReadAllText(hogLog) : ""), l => l.Contains("ready", StringComparison.Ordinal),
            $"{hogLog} to say ready", ct: Ct);

        var clock = Stopwatch.StartNew();
        var checkpoint = d.Runtime.CheckpointContainerAsync(new CheckpointContainerRequest { ContainerId = hog, Location = d.Dir.Combine("hog.tar") }, cancellationToken: Ct).ResponseAsync;
        // The dump is under way once its CRIU work directory exists (it lives until the archive is written).
        var bundle = Path.Combine(d.Daemon.Config.Paths.Root, "containers", hog);
        await Eventually.UntilAsync(() => Directory.EnumerateDirectories(bundle, "checkpoint-work-*").Any() || checkpoint.IsCompleted, $"a checkpoint-work-* dir in {bundle}", ct: Ct);
        if (checkpoint.IsCompleted)
        {
            await checkpoint; // a failure shows here
            Assert.Fail("the checkpoint ended before the other calls could be made; the container holds too little memory to be slow here");
        }

        // Other objects, and reads of the one being dumped: none of these takes the dumped container's lock.
        var listed = await TimedAsync(async () => (await d.Runtime.ListContainersAsync(new ListContainersRequest(), cancellationToken: Ct)).Containers.Count);
        var status = await TimedAsync(async () => (await d.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = hog }, cancellationToken: Ct)).Status.State);
        var other = PodTests.Pod(d, "other");
        var started = await TimedAsync(async () => (await PodTests.RunAsync(d, other, PodTests.Container("app", "sleep 1000"))).Container);
        var endedOthers = clock.Elapsed;
        var stillDumping = !checkpoint.IsCompleted;

        await checkpoint.WaitAsync(TimeSpan.FromMinutes(5), Ct);
        var checkpointTook = clock.Elapsed;
        var report = $"checkpoint of 512 MiB took {checkpointTook.TotalSeconds:F1} s; ListContainers {listed.Took.TotalSeconds:F2} s, " +
                     $"ContainerStatus {status.Took.TotalSeconds:F2} s, RunPodSandbox+CreateContainer+StartContainer {started.Took.TotalSeconds:F2} s, all done at {endedOthers.TotalSeconds:F1} s";
        TestContext.Current.TestOutputHelper?.WriteLine(report);

        Assert.Equal(1, listed.Value);
        Assert.Equal(ContainerState.ContainerRunning, status.Value);
        var app = await d.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = started.Value }, cancellationToken: Ct);
        Assert.Equal(ContainerState.ContainerRunning, app.Status.State);
        // The proof is the order, not a speed: every call on other objects came back while the dump still ran.
        Assert.True(stillDumping, "the calls on other objects ended only after the checkpoint: " + report);
        Assert.True(File.Exists(d.Dir.Combine("hog.tar")));
    }

    private static async Task<(T Value, TimeSpan Took)> TimedAsync<T>(Func<Task<T>> call)
    {
        var clock = Stopwatch.StartNew();
        var value = await call().WaitAsync(TimeSpan.FromMinutes(2), Ct);
        return (value, clock.Elapsed);
    }
}
