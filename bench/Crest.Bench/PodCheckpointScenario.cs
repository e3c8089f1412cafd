using System.Diagnostics;
using System.Text.RegularExpressions;
using Crest.Checkpoint.Format;
using Crest.TestKit;
using Runtime.V1;

namespace Crest.Bench;

/// <summary>
/// KEP-5823 pod checkpoint and restore of a three-container pod (Crest only: containerd 2.1 has no CheckpointPod).
/// Each run uses a fresh pod: CheckpointPod, then the same three containers checkpointed one by one with
/// CheckpointContainer (what the pod's one freeze replaces), then the pod is removed and RestorePod plus the three
/// StartContainer calls bring it back; the restored counter must continue from its checkpointed value.
/// </summary>
internal static partial class PodCheckpointScenario
{
    /// <summary>Both variants hold the counter (the sanity check) and a sleep; the third is another sleep or 256 MiB of touched memory.</summary>
    public static readonly (string Name, long Bytes)[] Variants = [("3 idle", 0), ("256 MiB + 2 idle", 256L << 20)];

    public sealed record Sample(
        double CheckpointPodMs,
        double PodFrozenMs,
        long PodBytes,
        double ContainersMs,
        double ContainersFrozenMs,
        long ContainersBytes,
        double RestorePodMs,
        double RestoreMs);

    private const string CounterName = "counter";

    private static ContainerConfig Container(string name, string[] command) => new()
    {
        Metadata = new ContainerMetadata { Name = name },
        Image = new ImageSpec { Image = PodScenario.BusyboxName },
        Command = { command },
        LogPath = name + ".log",
        Linux = new LinuxContainerConfig(),
    };

    private static List<ContainerConfig> Containers(long bytes) =>
    [
        Container(CounterName, ["/bin/busybox", "sh", "-c", "echo ready; i=0; while true; do i=$((i+1)); echo count $i; sleep 0.2; done"]),
        Container("sleep", ["/bin/busybox", "sh", "-c", "echo ready; exec /bin/busybox sleep 1000000"]),
        bytes == 0
            ? Container("sleep2", ["/bin/busybox", "sh", "-c", "echo ready; exec /bin/busybox sleep 1000000"])
            // The same technique as CheckpointScenario: awk builds a string of that size, then waits in sleep.
            : Container("memory", ["/bin/busybox", "awk", $"BEGIN{{s=sprintf(\"%{bytes}s\",\"\"); print \"ready\"; fflush(); system(\"exec /bin/busybox sleep 1000000\")}}"]),
    ];

    /// <summary>One run in a fresh pod; throws if any call fails or the restored counter does not continue.</summary>
    public static async Task<Sample> RunAsync(RunningSubject subject, string variant, long bytes, string work, int n)
    {
        using var channel = UnixGrpc.Channel(subject.Socket);
        var rt = new RuntimeService.RuntimeServiceClient(channel);
        PodSandboxConfig Pod(int attempt) => new()
        {
            Metadata = new PodSandboxMetadata { Name = $"podcr{n}", Uid = $"uid-podcr{n}", Namespace = "bench", Attempt = (uint)attempt },
            Hostname = $"podcr{n}",
            LogDirectory = Directory.CreateDirectory(Path.Combine(work, $"logs-{n}-{attempt}")).FullName,
            Linux = new LinuxPodSandboxConfig(),
        };
        var deadline = DateTime.UtcNow.AddMinutes(10);
        var pod = Pod(1);
        var configs = Containers(bytes);
        var p = await rt.RunPodSandboxAsync(new RunPodSandboxRequest { Config = pod }, deadline: deadline);
        var ids = new List<string>();
        foreach (var config in configs)
        {
            var c = await rt.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = p.PodSandboxId, Config = config, SandboxConfig = pod }, deadline: deadline);
            await rt.StartContainerAsync(new StartContainerRequest { ContainerId = c.ContainerId }, deadline: deadline);
            ids.Add(c.ContainerId);
        }

        foreach (var config in configs)
        {
            await WaitForAsync(Path.Combine(pod.LogDirectory, config.LogPath), " ready", $"{variant}: container {config.Metadata.Name} did not report ready");
        }

        await Task.Delay(500);
        var counterLog = Path.Combine(pod.LogDirectory, CounterName + ".log");
        var output = Path.Combine(work, $"pod-{n}");
        var removed = false;
        try
        {
            var clock = Stopwatch.StartNew();
            await rt.CheckpointPodAsync(new CheckpointPodRequest { PodSandboxId = p.PodSandboxId, OutputPath = output }, deadline: deadline);
            var checkpointPodMs = clock.Elapsed.TotalMilliseconds;
            var atCheckpoint = LastCount(await ReadAsync(counterLog));
            var manifest = await PodCheckpointManifests.ReadAsync(output, 4 << 20, CancellationToken.None);
            var podBytes = Directory.EnumerateFiles(output, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);

            // The comparison: the same three containers, still running, checkpointed one after another.
            double containersMs = 0;
            double containersFrozenMs = 0;
            long containersBytes = 0;
            foreach (var id in ids)
            {
                var archive = Path.Combine(work, $"cp-{n}-{id[..12]}.tar");
                clock.Restart();
                await rt.CheckpointContainerAsync(new CheckpointContainerRequest { ContainerId = id, Location = archive, Timeout = 600 }, deadline: deadline);
                containersMs += clock.Elapsed.TotalMilliseconds;
                var metadata = await ArchiveMetadataReader.ReadAsync(archive, CancellationToken.None);
                containersFrozenMs += (metadata.Statistics ?? throw new InvalidOperationException($"checkpoint archive {archive} of container {id} has no stats-dump"))
                    .FrozenTimeUs / 1000.0;
                containersBytes += new FileInfo(archive).Length;
                File.Delete(archive);
            }

            await rt.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = p.PodSandboxId }, deadline: deadline);
            await rt.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = p.PodSandboxId }, deadline: deadline);
            removed = true;

            var restoredPod = Pod(2);
            var request = new RestorePodRequest { CheckpointPath = output, Config = restoredPod };
            request.ContainerConfigs.Add(Containers(bytes));
            clock.Restart();
            var restored = await rt.RestorePodAsync(request, deadline: deadline);
            var restorePodMs = clock.Elapsed.TotalMilliseconds;
            try
            {
                foreach (var c in restored.RestoredContainers)
                {
                    await rt.StartContainerAsync(new StartContainerRequest { ContainerId = c.ContainerId }, deadline: deadline);
                }

                await AllRunningAsync(rt, restored.RestoredContainers.Select(c => c.ContainerId), deadline);
                var restoreMs = clock.Elapsed.TotalMilliseconds;
                await CounterContinuesAsync(Path.Combine(restoredPod.LogDirectory, CounterName + ".log"), atCheckpoint, variant);
                return new Sample(checkpointPodMs, manifest.FrozenMilliseconds, podBytes, containersMs, containersFrozenMs, containersBytes, restorePodMs, restoreMs);
            }
            finally
            {
                await rt.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = restored.PodSandboxId }, deadline: deadline);
                await rt.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = restored.PodSandboxId }, deadline: deadline);
            }
        }
        finally
        {
            if (!removed)
            {
                await rt.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = p.PodSandboxId }, deadline: deadline);
                await rt.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = p.PodSandboxId }, deadline: deadline);
            }

            if (Directory.Exists(output))
            {
                Directory.Delete(output, recursive: true);
            }
        }
    }

    /// <summary>Polls ContainerStatus until every restored container reports RUNNING (StartContainer may return before).</summary>
    private static async Task AllRunningAsync(RuntimeService.RuntimeServiceClient rt, IEnumerable<string> ids, DateTime deadline)
    {
        var pending = ids.ToList();
        var clock = Stopwatch.StartNew();
        while (pending.Count > 0)
        {
            var states = new List<(string Id, ContainerState State)>();
            foreach (var id in pending)
            {
                var s = await rt.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = id }, deadline: deadline);
                states.Add((id, s.Status.State));
            }

            pending = states.Where(s => s.State != ContainerState.ContainerRunning).Select(s => s.Id).ToList();
            if (pending.Count > 0 && clock.Elapsed > TimeSpan.FromSeconds(30))
            {
                throw new TimeoutException($"restored containers not RUNNING 30 s after StartContainer: {string.Join(", ", states.Where(s => pending.Contains(s.Id)).Select(s => $"{s.Id[..12]} {s.State}"))}");
            }

            if (pending.Count > 0)
            {
                await Task.Delay(5);
            }
        }
    }

    /// <summary>
    /// The restored log begins with the checkpoint's copy of the old one, so a counter that continued has one
    /// "count 1" line and soon passes the value it had at the checkpoint; one that started over logs "count 1" again.
    /// </summary>
    private static async Task CounterContinuesAsync(string log, int atCheckpoint, string variant)
    {
        var clock = Stopwatch.StartNew();
        var text = "";
        while (clock.Elapsed < TimeSpan.FromSeconds(30))
        {
            text = await ReadAsync(log);
            var restarts = text.Split('\n').Count(l => l.EndsWith(" count 1", StringComparison.Ordinal));
            if (restarts > 1)
            {
                break;
            }

            if (LastCount(text) > atCheckpoint)
            {
                return;
            }

            await Task.Delay(100);
        }

        throw new InvalidOperationException(
            $"{variant}: the restored counter did not continue: it was at {atCheckpoint} after CheckpointPod, and {log} ends with:\n{text[^Math.Min(400, text.Length)..]}");
    }

    private static async Task WaitForAsync(string log, string marker, string failure)
    {
        var clock = Stopwatch.StartNew();
        while (!(await ReadAsync(log)).Contains(marker, StringComparison.Ordinal))
        {
            if (clock.Elapsed > TimeSpan.FromMinutes(2))
            {
                throw new TimeoutException(failure);
            }

            await Task.Delay(100);
        }
    }

    private static async Task<string> ReadAsync(string path) => File.Exists(path) ? await File.ReadAllTextAsync(path) : "";

    private static int LastCount(string log) =>
        CountLine().Matches(log).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).DefaultIfEmpty(0).Max();

    [GeneratedRegex(@" count (\d+)")]
    private static partial Regex CountLine();
}
