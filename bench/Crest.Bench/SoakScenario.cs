using System.Diagnostics;
using System.Globalization;
using Crest.TestKit;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Bench;

/// <summary>What <c>make soak</c> runs: how many pod cycles from how many clients, and how many checkpoint and restore cycles.</summary>
internal sealed record SoakOptions(int Cycles, int Clients, int Checkpoints, int HoldSeconds, string? CrestdPath)
{
    public static SoakOptions Parse(string[] args, string? crestdPath)
    {
        int Value(string name, int fallback)
        {
            var at = Array.IndexOf(args, name);
            return at >= 0 && at + 1 < args.Length ? int.Parse(args[at + 1], CultureInfo.InvariantCulture) : fallback;
        }

        return new SoakOptions(Value("--cycles", 500), Value("--clients", 8), Value("--checkpoints", 50), Value("--hold-seconds", 0), crestdPath);
    }
}

/// <summary>
/// The soak (issue 18): one crestd on temporary roots, pod cycles from several clients at once, checkpoint and restore
/// cycles, and streaming exec, attach and ExecSync on a long-lived pod, all in parallel. Afterwards, with every pod
/// removed, it counts what crestd still holds on the host (<see cref="SoakCensus"/>) and prints crestd's RSS at start,
/// peak and end. Exit code 1 on any leak or failed call; RSS is reported, not judged.
/// </summary>
internal static class SoakScenario
{
    private const string Talker = "talker";

    public static async Task<int> RunAsync(SoakOptions o)
    {
        var started = DateTime.UtcNow;
        var tag = $"crest-soak-{Environment.ProcessId}";
        var bridge = $"crsoak{Environment.ProcessId % 10000}";
        string leaseDir = "";
        await using var crestd = await Subjects.Crest(o.CrestdPath).StartAsync(writeCni: (dir, cni) => leaseDir = WriteConflist(dir, cni, bridge));
        var scope = new SoakScope(crestd.Dir.Path, crestd.Pid, tag, bridge, leaseDir);
        using var channel = UnixGrpc.Channel(crestd.Socket);
        var rt = new RuntimeService.RuntimeServiceClient(channel);
        var work = crestd.Dir.CreateDirectory("soak");
        var (busybox, _) = PodScenario.WriteArchives(work);
        await PodScenario.LoadIntoCrestAsync(crestd.Socket, busybox);
        var idleRss = SoakCensus.Rss(crestd.Pid);
        // A warm-up round (one cycle per client at once, a checkpoint cycle, one of each stream) before the first count:
        // assemblies load, the JIT compiles and the connection pools fill once, and that is not what the soak looks for.
        var warmup = new Failures();
        await Task.WhenAll(Enumerable.Range(1, o.Clients).Select(i => warmup.RunAsync("warm-up pod cycle", () => PodCycleAsync(rt, scope, work, -i)))
            .Append(o.Checkpoints > 0 ? warmup.RunAsync("warm-up checkpoint+restore cycle", () => CheckpointCycleAsync(rt, scope, work, 0)) : Task.CompletedTask)
            .Append(StreamAsync(rt, scope, work, crestd.Socket, warmup, new CancellationToken(canceled: true))));
        if (warmup.Count > 0)
        {
            Console.Error.WriteLine($"soak: the warm-up failed:{warmup.Describe()}");
            return 1;
        }

        var before = SoakCensus.Take(scope);
        Console.Error.WriteLine($"soak: crestd {crestd.Pid} on {scope.Dir}: {o.Cycles} pod cycles from {o.Clients} clients, {o.Checkpoints} checkpoint+restore cycles, streaming alongside");

        var failures = new Failures();
        var peak = before.RssBytes;
        using var stop = new CancellationTokenSource();
        var sampler = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                peak = Math.Max(peak, SoakCensus.Rss(crestd.Pid));
                await Task.Delay(250, CancellationToken.None);
            }
        });

        var clock = Stopwatch.StartNew();
        var next = 0;
        var cycles = Enumerable.Range(0, o.Clients).Select(_ => Task.Run(async () =>
        {
            for (var n = Interlocked.Increment(ref next); n <= o.Cycles; n = Interlocked.Increment(ref next))
            {
                await failures.RunAsync("pod cycle", () => PodCycleAsync(rt, scope, work, n));
                if (n % 50 == 0)
                {
                    Console.Error.WriteLine($"soak: {n} pod cycles started, {clock.Elapsed.TotalSeconds:F0} s");
                }
            }
        })).ToList();
        var checkpoints = Task.Run(async () =>
        {
            for (var n = 1; n <= o.Checkpoints; n++)
            {
                await failures.RunAsync("checkpoint+restore cycle", () => CheckpointCycleAsync(rt, scope, work, n));
            }
        });
        using var streamingStop = new CancellationTokenSource();
        var streaming = Task.Run(() => StreamAsync(rt, scope, work, crestd.Socket, failures, streamingStop.Token));

        await Task.WhenAll(cycles.Append(checkpoints));
        // With the streaming pod still up: shows that each count sees what a live pod holds.
        var during = SoakCensus.Take(scope);
        await streamingStop.CancelAsync();
        var streams = await streaming;
        var busy = clock.Elapsed;

        // What is left once every pod is gone and crestd has been idle a while (exits observed, pools settled).
        await Task.Delay(TimeSpan.FromSeconds(10));
        await stop.CancelAsync();
        await sampler;
        var after = SoakCensus.Take(scope);
        var records = (await rt.ListPodSandboxAsync(new ListPodSandboxRequest())).Items.Count + (await rt.ListContainersAsync(new ListContainersRequest())).Containers.Count;
        var leaks = Print(o, started, busy, idleRss, before, during, after, Math.Max(peak, after.RssBytes), records, streams, failures);
        if (o.HoldSeconds > 0)
        {
            // --hold-seconds: crestd stays up after the summary, to look at what it holds (ls -l /proc/PID/fd).
            Console.Error.WriteLine($"soak: crestd {crestd.Pid} stays up {o.HoldSeconds} s");
            await Task.Delay(TimeSpan.FromSeconds(o.HoldSeconds));
        }

        RemoveCgroupParent(tag);
        await RemoveBridgeAsync(bridge);
        return leaks == 0 && failures.Count == 0 ? 0 : 1;
    }

    private static int Print(SoakOptions o, DateTime started, TimeSpan busy, long idleRss, SoakCensus before, SoakCensus during, SoakCensus after, long peak, int records, string streams, Failures failures)
    {
        static string MiB(long bytes) => (bytes / 1048576.0).ToString("F1", CultureInfo.InvariantCulture) + " MiB";
        var leaks = 0;
        Console.WriteLine($"soak {started:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} CPUs: {o.Cycles} pod cycles from {o.Clients} clients, {o.Checkpoints} checkpoint+restore cycles, {streams}; {busy.TotalSeconds:F0} s");
        Console.WriteLine("  (start: after a warm-up round; live: with only the streaming pod up, after the cycles; idle: crestd ready with the image loaded, before any pod)");
        foreach (var (((kind, start), (_, live)), (_, end)) in before.Kinds().Zip(during.Kinds()).Zip(after.Kinds()))
        {
            var left = end.Except(start).ToList();
            leaks += left.Count;
            Console.WriteLine($"  {kind,-36} start {start.Count,4}  live {live.Count,4}  end {end.Count,4}{(left.Count == 0 ? "" : "  LEAK: " + string.Join("; ", left.Take(5)))}");
        }

        leaks += records;
        Console.WriteLine($"  {"CRI records (pods + containers)",-36} end {records,4}{(records == 0 ? "" : "  LEAK")}");
        // SQLite's connection pool keeps one open database per connection ever used at once (it grows to the peak number
        // of concurrent calls, not with the number of calls): counted on its own, bounded. Every other descriptor must be
        // back within a few of the start (assemblies loaded late, the thread pool's and Kestrel's own).
        static int Db(SoakCensus c) => c.FdsByKind.GetValueOrDefault("crest.db");
        static int Others(SoakCensus c) => c.OpenFds - Db(c) - c.FdsByKind.GetValueOrDefault("crest.db-wal");
        var fdLeak = Others(after) > Others(before) + 8;
        var poolLeak = Db(after) > 32;
        leaks += (fdLeak ? 1 : 0) + (poolLeak ? 1 : 0);
        Console.WriteLine($"  {"crestd open fds",-36} start {before.OpenFds,4}  end {after.OpenFds,4}{(fdLeak ? "  LEAK (more than 8 over the start, SQLite's pool aside)" : "")}");
        Console.WriteLine($"  {"  of which SQLite pooled connections",-36} start {Db(before),4}  end {Db(after),4}{(poolLeak ? "  LEAK (over 32)" : "  (a pool: grows to the peak of concurrent calls)")}");
        // SQLite checkpoints the WAL at 1000 pages (4 MiB) and reuses it from the start; a WAL far beyond that is never checkpointed.
        var walLeak = after.WalBytes > 16L << 20;
        leaks += walLeak ? 1 : 0;
        Console.WriteLine($"  {"SQLite WAL",-36} start {MiB(before.WalBytes)}  end {MiB(after.WalBytes)}{(walLeak ? "  LEAK (over 16 MiB)" : "")}");
        Console.WriteLine($"  {"crestd RSS (VmRSS)",-36} idle {MiB(idleRss)}  start {MiB(before.RssBytes)}  peak {MiB(peak)}  end {MiB(after.RssBytes)}  (end - start {MiB(after.RssBytes - before.RssBytes)}; target within 10 MiB, reported only)");
        Console.WriteLine($"  failed calls: {failures.Count}{failures.Describe()}");
        Console.WriteLine(leaks == 0 && failures.Count == 0 ? "soak: no leaks" : $"soak: {leaks} leaked, {failures.Count} failed");
        return leaks;
    }

    /// <summary>Runs a pod, creates and starts a container in it, then stops and removes both, as a kubelet would.</summary>
    private static async Task PodCycleAsync(RuntimeService.RuntimeServiceClient rt, SoakScope scope, string work, int n)
    {
        var pod = Pod(scope, work, $"cycle{n}");
        var deadline = DateTime.UtcNow.AddMinutes(3);
        var p = await rt.RunPodSandboxAsync(new RunPodSandboxRequest { Config = pod }, deadline: deadline);
        try
        {
            var c = await rt.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = p.PodSandboxId, Config = Container("app", "sleep 3600"), SandboxConfig = pod }, deadline: deadline);
            await rt.StartContainerAsync(new StartContainerRequest { ContainerId = c.ContainerId }, deadline: deadline);
            await rt.StopContainerAsync(new StopContainerRequest { ContainerId = c.ContainerId, Timeout = 1 }, deadline: deadline);
            await rt.RemoveContainerAsync(new RemoveContainerRequest { ContainerId = c.ContainerId }, deadline: deadline);
        }
        finally
        {
            await rt.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = p.PodSandboxId }, deadline: deadline);
            await rt.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = p.PodSandboxId }, deadline: deadline);
        }
    }

    /// <summary>A counter is checkpointed, restored into a new pod through CreateContainer, and must come back running.</summary>
    private static async Task CheckpointCycleAsync(RuntimeService.RuntimeServiceClient rt, SoakScope scope, string work, int n)
    {
        var deadline = DateTime.UtcNow.AddMinutes(5);
        var archive = Path.Combine(work, $"checkpoint-{n}.tar");
        var source = Pod(scope, work, $"ckpt{n}");
        var target = Pod(scope, work, $"restored{n}");
        var pods = new List<string>();
        try
        {
            var p = await rt.RunPodSandboxAsync(new RunPodSandboxRequest { Config = source }, deadline: deadline);
            pods.Add(p.PodSandboxId);
            var c = await rt.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = p.PodSandboxId, Config = Container("counter", "i=0; while true; do i=$((i+1)); echo count $i; sleep 0.2; done"), SandboxConfig = source }, deadline: deadline);
            await rt.StartContainerAsync(new StartContainerRequest { ContainerId = c.ContainerId }, deadline: deadline);
            await Task.Delay(500);
            await rt.CheckpointContainerAsync(new CheckpointContainerRequest { ContainerId = c.ContainerId, Location = archive, Timeout = 300 }, deadline: deadline);
            var q = await rt.RunPodSandboxAsync(new RunPodSandboxRequest { Config = target }, deadline: deadline);
            pods.Add(q.PodSandboxId);
            var config = Container("counter", "exit 1");
            config.Image = new ImageSpec { Image = archive };
            var r = await rt.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = q.PodSandboxId, Config = config, SandboxConfig = target }, deadline: deadline);
            await rt.StartContainerAsync(new StartContainerRequest { ContainerId = r.ContainerId }, deadline: deadline);
            var state = (await rt.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = r.ContainerId }, deadline: deadline)).Status.State;
            if (state != ContainerState.ContainerRunning)
            {
                throw new InvalidOperationException($"restored container {r.ContainerId} is {state}, not running");
            }
        }
        finally
        {
            foreach (var id in pods)
            {
                await rt.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = id }, deadline: deadline);
                await rt.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = id }, deadline: deadline);
            }

            File.Delete(archive);
        }
    }

    /// <summary>
    /// At least once and until cancelled, on one long-lived pod: a streaming exec through the crest CLI (WebSocket through crestd's streaming
    /// server), an attach to the talker's live output for five seconds, and an ExecSync. Returns what was done.
    /// </summary>
    private static async Task<string> StreamAsync(RuntimeService.RuntimeServiceClient rt, SoakScope scope, string work, string socket, Failures failures, CancellationToken ct)
    {
        var pod = Pod(scope, work, "streaming");
        var p = await rt.RunPodSandboxAsync(new RunPodSandboxRequest { Config = pod }, cancellationToken: CancellationToken.None);
        int execs = 0, attaches = 0, syncs = 0;
        try
        {
            var c = await rt.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = p.PodSandboxId, Config = Container(Talker, "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.1; done"), SandboxConfig = pod }, cancellationToken: CancellationToken.None);
            await rt.StartContainerAsync(new StartContainerRequest { ContainerId = c.ContainerId }, cancellationToken: CancellationToken.None);
            var crest = Subjects.BuiltPath("CrestPath");
            do
            {
                await failures.RunAsync("streaming exec", async () =>
                {
                    var output = await CliAsync(crest, socket, TimeSpan.FromSeconds(30), "exec", c.ContainerId, "/bin/busybox", "echo", "streamed");
                    Expect(output.Contains("streamed", StringComparison.Ordinal), $"crest exec printed \"{output.Trim()}\"");
                    execs++;
                });
                await failures.RunAsync("attach", async () =>
                {
                    // Long enough for the CLI to start on a busy node and print some of the talker's lines.
                    var output = await CliAsync(crest, socket, TimeSpan.FromSeconds(5), "attach", c.ContainerId);
                    Expect(output.Contains("line ", StringComparison.Ordinal), $"crest attach printed \"{output.Trim()}\" in 5 s");
                    attaches++;
                });
                await failures.RunAsync("ExecSync", async () =>
                {
                    var r = await rt.ExecSyncAsync(new ExecSyncRequest { ContainerId = c.ContainerId, Cmd = { "/bin/busybox", "echo", "sync" }, Timeout = 10 }, deadline: DateTime.UtcNow.AddSeconds(30));
                    Expect(r.ExitCode == 0 && r.Stdout.ToStringUtf8().Contains("sync", StringComparison.Ordinal), $"ExecSync exited {r.ExitCode}");
                    syncs++;
                });
            }
            while (!ct.IsCancellationRequested);
        }
        finally
        {
            await rt.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = p.PodSandboxId }, cancellationToken: CancellationToken.None);
            await rt.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = p.PodSandboxId }, cancellationToken: CancellationToken.None);
        }

        return $"{execs} streaming execs, {attaches} attaches of 5 s, {syncs} ExecSyncs";
    }

    private static void Expect(bool condition, string otherwise)
    {
        if (!condition)
        {
            throw new InvalidOperationException(otherwise);
        }
    }

    /// <summary>Runs the crest CLI against the soak's crestd; after <paramref name="limit"/> it is killed (a client that vanishes) and its output so far returned.</summary>
    private static async Task<string> CliAsync(string crest, string socket, TimeSpan limit, params string[] args)
    {
        var start = new ProcessStartInfo(crest) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
        foreach (var a in (string[])["-r", "unix://" + socket, .. args])
        {
            start.ArgumentList.Add(a);
        }

        using var process = Process.Start(start)!;
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(limit);
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill();
            await process.WaitForExitAsync();
            return await stdout;
        }

        var output = await stdout;
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"crest {string.Join(' ', args)} exited {process.ExitCode}: {(await stderr).Trim()}");
        }

        return output;
    }

    private static PodSandboxConfig Pod(SoakScope scope, string work, string name) => new()
    {
        Metadata = new PodSandboxMetadata { Name = name, Uid = "uid-" + name, Namespace = "soak", Attempt = 1 },
        Hostname = name,
        LogDirectory = Directory.CreateDirectory(Path.Combine(work, "logs", name)).FullName,
        Linux = new LinuxPodSandboxConfig { CgroupParent = scope.CgroupParent },
    };

    private static ContainerConfig Container(string name, string script) => new()
    {
        Metadata = new ContainerMetadata { Name = name },
        Image = new ImageSpec { Image = PodScenario.BusyboxName },
        Command = { "/bin/busybox", "sh", "-c", script },
        LogPath = name + ".log",
        Linux = new LinuxContainerConfig(),
    };

    /// <summary>A bridge, subnet and allocator directory of the soak's own, so its veths and leases can be counted.</summary>
    private static string WriteConflist(TempDir dir, string cni, string bridge)
    {
        var leases = dir.CreateDirectory("cni-leases");
        File.WriteAllText(Path.Combine(cni, "10-crest-soak.conflist"), $$"""
            {
              "cniVersion": "1.0.0",
              "name": "crest-soak",
              "plugins": [
                { "type": "bridge", "bridge": "{{bridge}}", "isGateway": true, "ipam": { "type": "host-local", "dataDir": "{{leases}}", "ranges": [[{ "subnet": "10.201.0.0/16" }]] } },
                { "type": "portmap", "capabilities": { "portMappings": true } },
                { "type": "loopback" }
              ]
            }
            """);
        return Path.Combine(leases, "crest-soak");
    }

    /// <summary>The soak's cgroup parent in each hierarchy, once empty (runc makes it; nothing removes a parent).</summary>
    private static void RemoveCgroupParent(string parent)
    {
        foreach (var dir in SoakCensus.Hierarchies(parent))
        {
            try
            {
                Directory.Delete(dir);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                Console.Error.WriteLine($"soak: cgroup {dir} stays: {e.Message}");
            }
        }
    }

    /// <summary>The soak's bridge: the CNI bridge plugin makes it on the first ADD and never removes it.</summary>
    private static async Task RemoveBridgeAsync(string bridge)
    {
        if (!Directory.Exists($"/sys/class/net/{bridge}"))
        {
            return;
        }

        using var ip = Process.Start(new ProcessStartInfo("ip", ["link", "delete", bridge]) { UseShellExecute = false })!;
        await ip.WaitForExitAsync();
    }

    /// <summary>Failed calls, counted by kind, with the first few messages.</summary>
    private sealed class Failures
    {
        private readonly Lock _gate = new();
        private readonly List<string> _first = [];

        public int Count { get; private set; }

        public async Task RunAsync(string what, Func<Task> call)
        {
            try
            {
                await call();
            }
            catch (Exception e) when (e is RpcException or InvalidOperationException or IOException or TimeoutException)
            {
                lock (_gate)
                {
                    Count++;
                    if (_first.Count < 5)
                    {
                        _first.Add($"{what}: {(e is RpcException r ? $"{r.StatusCode} {r.Status.Detail}" : e.Message)}");
                    }
                }

                Console.Error.WriteLine($"soak: {what} failed: {e.Message}");
            }
        }

        public string Describe() => _first.Count == 0 ? "" : "\n    " + string.Join("\n    ", _first);
    }
}
