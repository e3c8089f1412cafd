using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Crest.TestKit;
using Runtime.V1;

namespace Crest.Bench;

/// <summary>
/// cri-tools' own benchmark suite, <c>critest --benchmark</c> (run unmodified from the shared critest folder), against
/// each subject: PodSandbox lifecycle, Container lifecycle, Image pull/status/remove, ListImages (one JSON file of
/// per-operation durations each, written to <c>--benchmarking-output-dir</c>), and "start a container from scratch"
/// (one timed run-pod/create/start/stop/remove after one warm-up, reported only as a ginkgo report entry).
/// The images come from the loopback registry through each runtime's mirrors; every sample becomes a row value here,
/// so the rows get the same min, median and ratio columns as the rest of the table.
/// </summary>
internal static class CritestScenario
{
    /// <summary>The pause image containerd is pinned to for these rows (containerd 2.1's default sandbox image).</summary>
    public const string PauseImage = "registry.k8s.io/pause:3.10";

    /// <summary>critest's default container image: pulled before the run, so no create is timed with a pull in it.</summary>
    public const string ContainerImage = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

    private const string ScratchSpec = "benchmark about start a container from scratch";

    /// <summary>
    /// Every other benchmark spec. With --benchmark critest focuses on its benchmarks itself and ginkgo ORs focus flags,
    /// so a focus cannot narrow a run: the from-scratch-only runs skip the rest instead.
    /// </summary>
    private const string OtherSpecs = "benchmark about (lifecycle of PodSandbox|basic operations on Container|basic operations on Image|listing Image)";

    private static readonly (string File, string Label)[] DataFiles =
    [
        ("pod_benchmark_data.json", "critest pod lifecycle"),
        ("container_benchmark_data.json", "critest container lifecycle"),
        ("image_lifecycle_benchmark_data.json", "critest image lifecycle"),
        ("image_listing_benchmark_data.json", "critest image listing"),
    ];

    /// <summary>
    /// One full <c>critest --benchmark</c> run per subject with <paramref name="samples"/> sequential samples per lifecycle,
    /// then <paramref name="scratchRuns"/> - 1 more runs of the from-scratch spec alone (one timed sample per run).
    /// Raw files stay under <paramref name="outDir"/>/SUBJECT/run-N. A subject whose run fails loses its rows and gets a note.
    /// </summary>
    public static async Task RunAsync(Report report, IReadOnlyList<Subject> subjects, string critestDir, Mirrors mirrors, int samples, int scratchRuns, string outDir)
    {
        var critest = Path.Combine(critestDir, "bin", "critest");
        if (Directory.Exists(outDir))
        {
            Directory.Delete(outDir, recursive: true);
        }

        Directory.CreateDirectory(outDir);
        var paramsFile = Path.Combine(outDir, "benchmark-params.yaml");
        await File.WriteAllTextAsync(paramsFile, string.Create(CultureInfo.InvariantCulture, $"""
            # critest --benchmarking-params-file: sequential samples per lifecycle benchmark (critest skips a benchmark whose number is 0).
            podsNumber: {samples}
            containersNumber: {samples}
            imagesNumber: {samples}
            """));

        foreach (var subject in subjects)
        {
            var clock = Stopwatch.StartNew();
            Console.Error.WriteLine($"bench: {subject.Name}: critest --benchmark ({samples} samples per lifecycle; from scratch: {scratchRuns} runs)");
            try
            {
                await using var running = await subject.StartAsync(mirrors);
                await Scenarios.PullAsync(running.Socket, ContainerImage);
                await Scenarios.PullAsync(running.Socket, PauseImage);
                for (var r = 0; r < scratchRuns; r++)
                {
                    var dir = Path.Combine(outDir, subject.Name, $"run-{r}");
                    try
                    {
                        await RunCritestAsync(critest, running.Socket, paramsFile, dir, skip: r == 0 ? null : OtherSpecs);
                    }
                    finally
                    {
                        await RemovePodsAsync(running.Socket);
                    }

                    report.Add("critest pod + container from scratch (run, create, start, stop, remove)", "ms", subject.Name, ScratchMilliseconds(dir));
                    if (r == 0)
                    {
                        foreach (var (file, label) in DataFiles)
                        {
                            AddLifecycle(report, subject.Name, label, Path.Combine(dir, file));
                        }
                    }
                }

                Console.Error.WriteLine($"bench: {subject.Name}: critest rows took {clock.Elapsed.TotalSeconds:0} s");
            }
            catch (Exception e) when (e is InvalidOperationException or IOException or Grpc.Core.RpcException or TimeoutException or JsonException)
            {
                Console.Error.WriteLine($"bench: {subject.Name}: critest --benchmark failed: {e.Message}");
                report.Note($"critest --benchmark failed against {subject.Name} ({e.Message}); its critest rows are missing or partial.");
            }
        }
    }

    private static async Task RunCritestAsync(string critest, string socket, string paramsFile, string dir, string? skip)
    {
        Directory.CreateDirectory(dir);
        var start = new ProcessStartInfo(critest)
        {
            WorkingDirectory = dir,
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in new[]
        {
            "--benchmark", "--runtime-endpoint", "unix://" + socket, "--image-endpoint", "unix://" + socket,
            "--benchmarking-params-file", paramsFile, "--benchmarking-output-dir", dir,
            "--ginkgo.no-color", "--ginkgo.timeout", "10m", "--ginkgo.json-report", Path.Combine(dir, "report.json"),
        })
        {
            start.ArgumentList.Add(a);
        }

        if (skip is not null)
        {
            start.ArgumentList.Add("--ginkgo.skip");
            start.ArgumentList.Add(skip);
        }

        using var process = Process.Start(start)!;
        await using (var log = File.CreateText(Path.Combine(dir, "critest.log")))
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(11));
            try
            {
                await process.WaitForExitAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                throw new TimeoutException($"critest did not finish within 11 minutes (log: {dir}/critest.log)");
            }

            await log.WriteAsync(await stdout);
            await log.WriteAsync(await stderr);
        }

        // Every spec that ran must have passed: a failed benchmark's numbers are not numbers.
        var failures = Specs(dir)
            .Where(s => (string?)s["State"] is not ("passed" or "skipped"))
            .Select(s => $"{(string?)s["LeafNodeText"]}: {(string?)s["State"]} {(string?)s["Failure"]?["Message"]}".Trim())
            .ToList();
        if (failures.Count > 0 || process.ExitCode != 0)
        {
            throw new InvalidOperationException($"critest exited {process.ExitCode}: {string.Join("; ", failures)} (log: {dir}/critest.log)");
        }
    }

    private static IEnumerable<JsonNode> Specs(string dir) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "report.json")))!.AsArray()
            .SelectMany(suite => suite!["SpecReports"]?.AsArray() ?? [])
            .Select(s => s!);

    /// <summary>The from-scratch spec's one timed duration, from its gmeasure experiment in the ginkgo JSON report.</summary>
    private static double ScratchMilliseconds(string dir)
    {
        var spec = Specs(dir).Single(s => (string?)s["LeafNodeText"] == ScratchSpec && (string?)s["State"] == "passed");
        var entry = spec["ReportEntries"]!.AsArray().Single(e => (string?)e!["Name"] == "start-container-benchmark")!;
        var experiment = JsonNode.Parse((string)entry["Value"]!["AsJSON"]!)!;
        var durations = experiment["Measurements"]!.AsArray().Single()!["Durations"]!.AsArray();
        return durations.Single()!.GetValue<long>() / 1e6;
    }

    /// <summary>critest's LifecycleBenchmarksResultsSet: one row per operation name, one value per datapoint.</summary>
    private static void AddLifecycle(Report report, string subject, string label, string path)
    {
        var set = JsonNode.Parse(File.ReadAllText(path))!;
        var names = set["operationsNames"]!.AsArray().Select(n => (string)n!).ToList();
        foreach (var point in set["datapoints"]!.AsArray())
        {
            var ns = point!["operationsDurationsNs"]!.AsArray().Select(d => d!.GetValue<long>()).ToList();
            for (var i = 0; i < names.Count && i < ns.Count; i++)
            {
                report.Add($"{label}: {names[i]}", "ms", subject, ns[i] / 1e6);
            }
        }
    }

    /// <summary>critest removes what it makes; after a spec that failed half-way, pods may be left: remove them before the daemon goes.</summary>
    private static async Task RemovePodsAsync(string socket)
    {
        using var channel = UnixGrpc.Channel(socket);
        var client = new RuntimeService.RuntimeServiceClient(channel);
        var pods = await client.ListPodSandboxAsync(new ListPodSandboxRequest(), deadline: DateTime.UtcNow.AddSeconds(30));
        foreach (var pod in pods.Items)
        {
            await client.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = pod.Id }, deadline: DateTime.UtcNow.AddSeconds(90));
            await client.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = pod.Id }, deadline: DateTime.UtcNow.AddSeconds(90));
        }
    }
}
