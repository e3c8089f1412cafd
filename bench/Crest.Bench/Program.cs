using System.Globalization;
using Crest.Bench;

// make bench: crestd and containerd 2.1 side by side on this machine, driven by the same CRI client code.
var runs = 5;
var calls = 1000;
string? crestdPath = null;
string? critestDir = null;
string? mirrorsDir = null;
var critestSamples = 10;
var output = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../../results"));
for (var i = 0; i < args.Length - 1; i++)
{
    switch (args[i])
    {
        case "--runs": runs = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--calls": calls = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--out": output = Path.GetFullPath(args[++i]); break;
        case "--crestd": crestdPath = Path.GetFullPath(args[++i]); break;
        case "--critest": critestDir = Path.GetFullPath(args[++i]); break;
        case "--critest-mirrors": mirrorsDir = Path.GetFullPath(args[++i]); break;
        case "--critest-samples": critestSamples = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
    }
}

// --soak [--cycles N] [--clients N] [--checkpoints N]: make soak (issue 18), crestd alone; prints leaks and RSS, exit 1 on a leak.
if (args.Contains("--soak"))
{
    return await SoakScenario.RunAsync(SoakOptions.Parse(args, crestdPath));
}

// --migration-only [--runs N]: just the live migration rows (issue 15; crestd alone, two nodes on this machine).
// --pod-migration-only [--runs N]: just the whole-pod migration rows.
if (args.Contains("--migration-only") || args.Contains("--pod-migration-only"))
{
    return await MigrationScenario.RunOnlyAsync(runs, output, crestdPath, podsOnly: args.Contains("--pod-migration-only"));
}

// --checkpoint-only: just the checkpoint/restore rows (they take the longest to iterate on).
// --pod-checkpoint-only: just the pod checkpoint/restore rows (crestd alone: containerd 2.1 has no CheckpointPod).
// --critest-only: just the critest --benchmark rows (they need --critest and --critest-mirrors; scripts/bench.sh passes them).
var checkpointOnly = args.Contains("--checkpoint-only");
var podCheckpointOnly = args.Contains("--pod-checkpoint-only");
var critestOnly = args.Contains("--critest-only");
// --calls-only: just the per-call pod lifecycle rows (RunPodSandbox, CreateContainer, ... each timed), both runtimes interleaved.
var callsOnly = args.Contains("--calls-only");

var subjects = Subjects.Create(crestdPath);
var report = new Report(runs, calls);
// Issue 16's targets: at or under containerd (CLI rows: crictl), CRIU's frozen time within 10 ms of bare runc's on the
// same container, a restore within 1.10x of bare runc restoring the same images.
report.Target("daemon start-to-ready", 1.0);
report.Target("idle daemon RSS", 1.0);
foreach (var (name, bytes) in CheckpointScenario.Workloads)
{
    report.TargetWithin($"checkpoint {name}: CRIU frozen", 10, "bare runc");
    if (bytes >= 256L << 20)
    {
        report.Target($"restore {name}: create + start", 1.10, "bare runc");
        report.Target($"restore {name} from a checkpoint image: create + start", 1.10, "bare runc");
    }
}

if (!checkpointOnly && !podCheckpointOnly && !critestOnly && !callsOnly)
{
    foreach (var subject in subjects)
    {
        Console.Error.WriteLine($"bench: {subject.Name}: start-to-ready and idle RSS, {runs} runs");
        for (var r = 0; r < runs; r++)
        {
            await using var running = await subject.StartAsync();
            report.Add("daemon start-to-ready", "ms", subject.Name, running.StartToReady.TotalMilliseconds);
            // Idle is after start-up has settled: crestd gives start-up's allocations back 5 s after it starts (MemoryTrimmer).
            await Task.Delay(TimeSpan.FromSeconds(7));
            report.Add("idle daemon RSS", "MiB", subject.Name, running.RssBytes() / 1048576.0);
        }

        Console.Error.WriteLine($"bench: {subject.Name}: Version round trip, {calls} calls x {runs} runs");
        await using (var running = await subject.StartAsync())
        {
            await Scenarios.VersionLatencyAsync(running.Socket, 100, _ => { });
            for (var r = 0; r < runs; r++)
            {
                var samples = new List<double>();
                await Scenarios.VersionLatencyAsync(running.Socket, calls, samples.Add);
                samples.Sort();
                // One value per run: the median of its calls; the table then shows min and median over runs.
                report.Add("Version round trip", "µs", subject.Name, samples[samples.Count / 2] * 1000);
            }

            await CliScenario.RunAsync(report, subject.Name, running.Socket, critestDir, runs);
        }
    }

    Console.Error.WriteLine("bench: building a ~100 MB, 4-layer image and pushing it to a loopback registry");
    await using (var registry = await Crest.TestKit.LocalRegistry.StartAsync())
    using (var layout = new Crest.TestKit.TempDir("crest-bench-layout"))
    {
        var image = await Scenarios.PushLargeImageAsync(registry, layout.Path);
        foreach (var subject in subjects)
        {
            Console.Error.WriteLine($"bench: {subject.Name}: cold pull of {image}, {runs} runs");
            for (var r = 0; r < runs; r++)
            {
                await using var running = await subject.StartAsync();
                report.Add("pull 100 MB, 4 layers (cold)", "ms", subject.Name, (await Scenarios.PullAsync(running.Socket, image)).TotalMilliseconds);
            }
        }
    }
}

if (!checkpointOnly && !podCheckpointOnly && !critestOnly)
{
    Console.Error.WriteLine($"bench: pod lifecycle, each CRI call timed: both runtimes running, {runs} cycles each, interleaved");
    await PodScenario.RunCallsAsync(report, subjects, runs);
}

if (!checkpointOnly && !podCheckpointOnly && !callsOnly)
{
    if (critestDir is not null && mirrorsDir is not null)
    {
        Console.Error.WriteLine($"bench: cri-tools' critest --benchmark from {critestDir}, images from the loopback registry through each runtime's mirrors");
        await CritestScenario.RunAsync(report, subjects, critestDir, new Mirrors(mirrorsDir), critestSamples, runs, Path.Combine(output, "critest"));
        report.Note(string.Create(CultureInfo.InvariantCulture, $"critest rows: cri-tools v1.36.0 `critest --benchmark`, unmodified, images from a loopback registry through each runtime's mirrors; containerd's pause image is registry.k8s.io/pause:3.10 from there, pulled before the run like critest's busybox. Lifecycle rows: {critestSamples} sequential samples each (benchmarking-params-file podsNumber = containersNumber = imagesNumber = {critestSamples}; critest's own defaults run none), per-operation durations from critest's JSON files; \"container lifecycle\" also makes and removes an untimed pod per sample; image lifecycle pulls and removes public.ecr.aws/docker/library/busybox:1.35.0-glibc (1.9 MB). From scratch: {runs} critest runs, one timed sample each (critest times one cycle after one warm-up cycle)."));
    }
    else if (critestOnly)
    {
        Console.Error.WriteLine("bench: --critest-only needs --critest DIR and --critest-mirrors DIR (scripts/bench.sh passes both)");
        return 2;
    }
    else
    {
        report.Note("critest rows: not run (no --critest/--critest-mirrors; scripts/bench.sh passes them when critest is found).");
    }
}

if (!critestOnly && !podCheckpointOnly && !callsOnly)
{
    Console.Error.WriteLine("bench: checkpoint and restore through CRI (idle, 256 MiB, 1 GiB); bare runc checkpoint and restore of Crest's container are the floor");
    await using (var registry = await Crest.TestKit.LocalRegistry.StartAsync())
    using (var work = new Crest.TestKit.TempDir("crest-bench-cr"))
    {
        var (_, pause) = PodScenario.WriteArchives(work.Path);
        var image = await CheckpointScenario.PushBusyboxAsync(registry, work.Path);
        var crRuns = Math.Max(1, runs);
        foreach (var subject in subjects)
        {
            await using var running = await subject.StartAsync();
            // The workload's image is pulled from the loopback registry by both, so both restores can resolve it by name.
            await Scenarios.PullAsync(running.Socket, image);
            if (subject.Name != "crest")
            {
                await PodScenario.LoadIntoContainerdAsync(running.Socket, pause);
            }

            var n = 0;
            foreach (var (name, bytes) in CheckpointScenario.Workloads)
            {
                for (var r = 0; r < crRuns; r++)
                {
                    var sample = await CheckpointScenario.RunAsync(running, image, subject.Name, bytes, work.CreateDirectory($"{subject.Name}-{n}"), n++, bareRunc: subject.Name == "crest");
                    report.Add($"checkpoint {name}: total", "ms", subject.Name, sample.CheckpointMs);
                    if (sample.FrozenMs is { } frozen)
                    {
                        report.Add($"checkpoint {name}: CRIU frozen", "ms", subject.Name, frozen);
                    }

                    if (sample.FirstFrozenMs is { } firstFrozen)
                    {
                        report.Add($"checkpoint {name}: CRIU frozen, first dump of the process (untimed warm-up)", "ms", subject.Name, firstFrozen);
                    }

                    report.Add($"checkpoint {name}: archive", "MiB", subject.Name, sample.ArchiveBytes / 1048576.0);
                    if (sample.BareRuncMs is { } bare)
                    {
                        report.Add($"checkpoint {name}: total", "ms", "bare runc", bare);
                    }

                    if (sample.BareFrozenMs is { } bareFrozen)
                    {
                        report.Add($"checkpoint {name}: CRIU frozen", "ms", "bare runc", bareFrozen);
                    }

                    if (sample.RestoreMs is { } restore)
                    {
                        report.Add($"restore {name}: create + start", "ms", subject.Name, restore);
                    }

                    if (sample.BareRuncRestoreMs is { } bareRestore)
                    {
                        report.Add($"restore {name}: create + start", "ms", "bare runc", bareRestore);
                        report.Add($"restore {name} from a checkpoint image: create + start", "ms", "bare runc", bareRestore);
                    }

                    if (sample.ImageRestoreMs is { } imageRestore)
                    {
                        report.Add($"restore {name} from a checkpoint image: create + start", "ms", subject.Name, imageRestore);
                    }
                }
            }
        }
    }

    report.Note("checkpoint rows: a busybox awk process holding the named amount of touched memory in a fresh pod per run; CheckpointContainer is the whole CRI call, CRIU frozen is CRIU's own frozen time from the archive's stats-dump; each subject first checkpoints the process once untimed (a process's first dump costs CRIU about twice the next at 1 GiB, whoever dumps it; reported as the first-dump row), then the timed checkpoint; for Crest, bare `runc checkpoint --leave-running` of the same container is the floor, run before Crest's on odd runs and after it on even ones, with the page cache written back (sync) before each timed dump (so Crest's checkpoints there always find the page cache under its writeback threshold, as on an idle node). Restore rows: CreateContainer + StartContainer into a fresh pod; bare runc restores the same images into a copy of the container's bundle.");
}

if (!critestOnly && !checkpointOnly && !callsOnly)
{
    Console.Error.WriteLine($"bench: pod checkpoint and restore of a 3-container pod (3 idle; 256 MiB + 2 idle), {runs} runs each, crest only (containerd 2.1 has no CheckpointPod)");
    using var work = new Crest.TestKit.TempDir("crest-bench-pod-cr");
    var (busybox, pause) = PodScenario.WriteArchives(work.Path);
    var crest = subjects.Single(s => s.Name == "crest");
    await using var running = await crest.StartAsync();
    await PodScenario.LoadImagesAsync(crest.Name, running.Socket, busybox, pause);

    // One untimed run first, so the JIT of the pod checkpoint and restore paths is not in the first sample.
    await PodCheckpointScenario.RunAsync(running, "warm-up", 0, work.CreateDirectory("warm-up"), 999);
    var n = 0;
    foreach (var (variant, bytes) in PodCheckpointScenario.Variants)
    {
        var rows = new List<(string Scenario, string Unit, string NotApplicable, Func<PodCheckpointScenario.Sample, double> Value)>
        {
            ($"pod checkpoint {variant}: CheckpointPod total", "ms", "no CheckpointPod", s => s.CheckpointPodMs),
            ($"pod checkpoint {variant}: pod frozen window (pod.json)", "ms", "no CheckpointPod", s => s.PodFrozenMs),
            ($"pod checkpoint {variant}: 3× CheckpointContainer total (sum of calls)", "ms", "not run: Crest-only comparison", s => s.ContainersMs),
            ($"pod checkpoint {variant}: 3× CheckpointContainer CRIU frozen (sum, stats-dump)", "ms", "not run: Crest-only comparison", s => s.ContainersFrozenMs),
            ($"pod checkpoint {variant}: size, pod directory", "MiB", "no CheckpointPod", s => s.PodBytes / 1048576.0),
            ($"pod checkpoint {variant}: size, 3 container archives", "MiB", "not run: Crest-only comparison", s => s.ContainersBytes / 1048576.0),
            ($"pod restore {variant}: RestorePod", "ms", "no CheckpointPod", s => s.RestorePodMs),
            ($"pod restore {variant}: RestorePod + 3 StartContainer (all RUNNING)", "ms", "no CheckpointPod", s => s.RestoreMs),
        };
        for (var r = 0; r < runs; r++)
        {
            Console.Error.WriteLine($"bench: pod checkpoint {variant}, run {r + 1} of {runs}");
            var sample = await PodCheckpointScenario.RunAsync(running, variant, bytes, work.CreateDirectory($"pod-{n}"), n++);
            foreach (var row in rows)
            {
                report.Add(row.Scenario, row.Unit, crest.Name, row.Value(sample));
            }
        }

        foreach (var row in rows)
        {
            report.NotApplicable(row.Scenario, "containerd", row.NotApplicable);
        }
    }

    report.Note("pod checkpoint rows: a fresh 3-container pod per run (a counter logging every 0.2 s, a sleep, and a second sleep or busybox awk holding 256 MiB of touched memory), after one untimed warm-up run. CheckpointPod is the whole CRI call; the pod frozen window is pod.json's frozenMilliseconds (first container paused to last resumed, CRIU dumps and the pod's /dev/shm included). Then the same three containers, still running, are checkpointed one after another with CheckpointContainer: the sum of the three calls, and the sum of CRIU's frozen times from each archive's stats-dump. The pod is then stopped and removed; RestorePod is timed alone and with the three StartContainer calls until ContainerStatus reports all RUNNING, and the restored counter must continue from its checkpointed value (the run fails otherwise).");
}

// Live migration between two crestd (issue 15): crest only, at most 3 runs per row (12 rows of workload and strategy, up to 1 GiB each).
if (!critestOnly && !checkpointOnly && !podCheckpointOnly && !callsOnly)
{
    await MigrationScenario.AddRowsAsync(report, Math.Max(1, Math.Min(runs, 3)), crestdPath);
}

Directory.CreateDirectory(output);
var stamp = DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture);
var markdown = report.Markdown([.. subjects.Select(s => s.Name), "bare runc"], Environment.MachineName);
var json = report.Json();
await File.WriteAllTextAsync(Path.Combine(output, $"bench-{stamp}.md"), markdown);
await File.WriteAllTextAsync(Path.Combine(output, $"bench-{stamp}.json"), json);
await File.WriteAllTextAsync(Path.Combine(output, "latest.md"), markdown);
await File.WriteAllTextAsync(Path.Combine(output, "latest.json"), json);
Console.WriteLine(markdown);
Console.Error.WriteLine($"bench: wrote {Path.Combine(output, "latest.md")} and latest.json");
return 0;
