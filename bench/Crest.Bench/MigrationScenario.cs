using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Text.Json;
using Crest.TestKit;

namespace Crest.Bench;

/// <summary>
/// Live migration rows (issue 15, <c>--migration-only</c>): two crestd on this machine (own roots, sockets and CNI
/// bridges, one loopback registry), and <c>crest migrate</c> of <c>bench/workloads/memory-dirtier.c</c> (built static
/// here) holding 64 MiB, 256 MiB or 1 GiB and rewriting 1 or 32 MiB/s of it, a line every 10 ms. Each run migrates a
/// fresh workload from A to B, stop-copy and post-copy. Rows: crest's downtime (the workload's last CRI log line on A
/// to its first on B), the workload's own gap across the switch, the frozen window, the whole command, and the extra
/// work the rewrites took on B in the two seconds after the switch (pages faulting in). Every run then has the
/// workload check all its memory on B against what it wrote and fails on a single wrong word.
/// </summary>
internal static partial class MigrationScenario
{
    public static readonly int[] SizesMiB = [64, 256, 1024];

    public static readonly int[] DirtyMiBPerSecond = [1, 32];

    /// <summary>The workload's tick; its gap across the switch is the downtime to this resolution.</summary>
    private const int TickMs = 10;

    /// <summary>How long after the switch the rewrites' extra time is summed.</summary>
    private static readonly TimeSpan FaultInWindow = TimeSpan.FromSeconds(2);

    private const string WorkloadPath = "bin/memory-dirtier";

    /// <summary>The migration rows alone; <paramref name="podsOnly"/> (<c>--pod-migration-only</c>): only the whole-pod rows.</summary>
    public static async Task<int> RunOnlyAsync(int runs, string output, string? crestdPath, bool podsOnly = false)
    {
        var report = new Report(runs, 0);
        await AddRowsAsync(report, runs, crestdPath, containerRows: !podsOnly, podRows: podsOnly);
        Directory.CreateDirectory(output);
        var stamp = DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture);
        var markdown = report.Markdown(["crest"], Environment.MachineName);
        await File.WriteAllTextAsync(Path.Combine(output, $"bench-migration-{stamp}.md"), markdown);
        await File.WriteAllTextAsync(Path.Combine(output, $"bench-migration-{stamp}.json"), report.Json());
        Console.WriteLine(markdown);
        Console.Error.WriteLine($"bench: wrote {Path.Combine(output, $"bench-migration-{stamp}.md")}");
        return 0;
    }

    /// <summary>The container rows and (<paramref name="podRows"/>) the whole-pod rows; <c>make bench</c> has both.</summary>
    public static async Task AddRowsAsync(Report report, int runs, string? crestdPath, bool containerRows = true, bool podRows = true)
    {
        string? postCopyProblem = null;
        var crest = Subjects.BuiltPath("CrestPath");
        Console.Error.WriteLine($"bench: live migration stop-copy and post-copy between two crestd ({string.Join(", ", SizesMiB)} MiB, rewriting {string.Join(" or ", DirtyMiBPerSecond)} MiB/s), {runs} runs each");
        await using var registry = await LocalRegistry.StartAsync();
        var subject = Subjects.Crest(crestdPath);
        await using var a = await subject.StartAsync(writeCni: (_, cni) => CniFixture.WriteBridgeConflist(cni, "crest-bench-mig-a", "crbmiga", "10.129.0.0/16"));
        await using var b = await subject.StartAsync(writeCni: (_, cni) => CniFixture.WriteBridgeConflist(cni, "crest-bench-mig-b", "crbmigb", "10.130.0.0/16"));
        try
        {
            string[] ra = ["-r", "unix://" + a.Socket];
            string[] rb = ["-r", "unix://" + b.Socket];
            var image = $"{registry.Host}/bench/memory-dirtier:v1";
            var rootfs = a.Dir.Combine("rootfs.tar");
            var workload = await BuildWorkloadAsync(a.Dir.Combine("memory-dirtier"));
            await using (var f = File.Create(rootfs))
            await using (var t = new System.Formats.Tar.TarWriter(f, System.Formats.Tar.TarEntryFormat.Pax))
            {
                TestImages.BusyboxRootfs(t);
                var entry = new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.RegularFile, WorkloadPath)
                {
                    Mode = (UnixFileMode)0x1ED,
                    DataStream = new MemoryStream(await File.ReadAllBytesAsync(workload)),
                };
                t.WriteEntry(entry);
            }

            await Crest(crest, [.. ra, "image", "import", rootfs, image]);
            await Crest(crest, [.. ra, "image", "push", image]);
            await Crest(crest, [.. ra, "rmi", image]);
            await Crest(crest, [.. ra, "pull", image]);

            using (var info = JsonDocument.Parse(await Crest(crest, [.. ra, "info", "-o", "json"])))
            {
                postCopyProblem = info.RootElement.GetProperty("liveMigration").EnumerateArray()
                    .Single(s => s.GetProperty("strategy").GetString() == "post-copy") is var pc && pc.GetProperty("supported").GetBoolean()
                    ? null : pc.GetProperty("reason").GetString();
            }

            var n = 0;
            foreach (var mib in containerRows ? SizesMiB : [])
            {
                foreach (var rate in DirtyMiBPerSecond)
                {
                    // Runs alternate the strategies, so both see the same machine state.
                    for (var r = 0; r < runs; r++)
                    {
                        // Through the registry (--via) at the lowest rate only: what the registry adds does not depend on it.
                        var variants = (postCopyProblem is null ? new[] { "stop-copy", "post-copy" } : ["stop-copy"]).Select(s => (Strategy: s, Via: (string?)null))
                            .Concat(rate == DirtyMiBPerSecond[0] ? [("stop-copy", $"{registry.Host}/bench/checkpoints")] : []);
                        foreach (var (strategy, via) in variants)
                        {
                            var m = await MigrateOnceAsync(crest, a, ra, b, rb, image, mib, rate, n++, strategy, via);
                            var row = $"migrate {strategy}{(via is null ? "" : " via registry")} {Size(mib)}, {rate} MiB/s rewritten";
                            report.Add($"{row}: downtime", "ms", "crest", m.Downtime);
                            report.Add($"{row}: workload's gap", "ms", "crest", m.WorkloadGap);
                            report.Add($"{row}: frozen", "ms", "crest", m.Frozen);
                            report.Add($"{row}: total", "ms", "crest", m.Total);
                            report.Add($"{row}: fault-in slowdown", "ms", "crest", m.FaultIn);
                        }
                    }
                }
            }

            if (podRows)
            {
                await AddPodRowsAsync(report, runs, crest, a, ra, b, rb, image, postCopyProblem is null);
            }
        }
        finally
        {
            foreach (var bridge in new[] { "crbmiga", "crbmigb" })
            {
                using var p = Process.Start(new ProcessStartInfo("ip", ["link", "delete", bridge]) { RedirectStandardError = true });
                await p!.WaitForExitAsync();
            }
        }

        report.Note($"migration rows: two crestd on this machine (own roots, sockets, CNI bridges; one loopback registry), `crest migrate --strategy stop-copy|post-copy` of a fresh bench/workloads/memory-dirtier process holding the size given and rewriting that many MiB/s of it, a few pages every {TickMs} ms, each tick one log line. downtime: the workload's last CRI log line on A to its first on B, as crest prints it; workload's gap: the longest wall time between two of the workload's ticks across the switch (its first three on B), less one tick, from its own clock readings; frozen: freeze to the target running; total: the whole command, pre-staging included; fault-in slowdown: how much longer the rewrites of the ticks begun on B took in the {FaultInWindow.TotalSeconds:0} s after the switch than their median on A, summed (post-copy pages that fault in from A). Every run then has the workload check every word of its memory on B against what it wrote (SIGUSR1, `verify ok`) and fails otherwise. "
            + "via registry: stop-copy with `--via` the loopback registry (the source pushes the checkpoint as a checkpoint image, the target pulls it by digest; no rootfs rounds), at the lowest rate only. "
            + (postCopyProblem is null ? "" : "No post-copy rows in this run: " + postCopyProblem));
    }

    private static string Size(int mib) => mib >= 1024 ? $"{mib / 1024} GiB" : $"{mib} MiB";

    /// <summary>Builds the workload static with clang (installed for the Native AOT link; the image has no libc).</summary>
    private static async Task<string> BuildWorkloadAsync(string output)
    {
        var workloads = typeof(MigrationScenario).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == "WorkloadsDir").Value!;
        var source = Path.GetFullPath(Path.Combine(workloads, "memory-dirtier.c"));
        var start = new ProcessStartInfo("clang", ["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", output, source]) { RedirectStandardError = true };
        using var p = Process.Start(start)!;
        var stderr = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        return p.ExitCode == 0 ? output : throw new InvalidOperationException($"bench: building {source} failed ({p.ExitCode}): {stderr}");
    }

    private sealed record Migration(double Downtime, double WorkloadGap, double Frozen, double Total, double FaultIn);

    /// <summary>One tick line of the workload: its number, when it began (wall clock), and its rewrite's duration.</summary>
    private sealed record Tick(long Number, DateTimeOffset At, double WorkMs, double GapMs)
    {
        public static Tick? Parse(string line)
        {
            var at = line.IndexOf("tick ", StringComparison.Ordinal);
            if (at < 0)
            {
                return null;
            }

            var f = line[(at + 5)..].Split(' ');
            if (f.Length < 7 || f[1] != "at" || f[3] != "work_us" || f[5] != "gap_us")
            {
                return null;
            }

            var seconds = decimal.Parse(f[2], CultureInfo.InvariantCulture);
            var when = DateTimeOffset.FromUnixTimeMilliseconds(0).AddTicks((long)(seconds * TimeSpan.TicksPerSecond));
            return new Tick(long.Parse(f[0], CultureInfo.InvariantCulture), when,
                double.Parse(f[4], CultureInfo.InvariantCulture) / 1000, double.Parse(f[6], CultureInfo.InvariantCulture) / 1000);
        }
    }

    private static async Task<Migration> MigrateOnceAsync(
        string crest, RunningSubject a, string[] ra, RunningSubject b, string[] rb, string image, int mib, int rate, int n, string strategy, string? via)
    {
        var podA = Pod(a, $"mig{n}", "a");
        var podB = Pod(b, $"mig{n}", "b");
        var config = a.Dir.Combine($"memory-{n}.json");
        await File.WriteAllTextAsync(config, $$"""
            {"metadata": {"name": "memory"}, "image": {"image": "{{image}}"},
             "command": ["/{{WorkloadPath}}", "{{mib}}", "{{rate}}", "{{TickMs}}"], "log_path": "memory.log", "linux": {} }
            """);
        var pod = (await Crest(crest, [.. ra, "runp", podA.Config])).Trim();
        string? newPod = null;
        try
        {
            var id = (await Crest(crest, [.. ra, "create", pod, config, podA.Config])).Trim();
            await Crest(crest, [.. ra, "start", id]);
            await Until(() => Ticks(podA.Log).Count >= 100, $"the {mib} MiB workload on A to tick 100 times");

            var migrated = await Crest(crest, [.. ra, "migrate", id, "--to", "unix://" + b.Socket, "--pod-config", podB.Config, "--strategy", strategy, "-o", "json",
                .. via is null ? Array.Empty<string>() : ["--via", via]]);
            using var doc = JsonDocument.Parse(migrated);
            var r = doc.RootElement;
            newPod = r.GetProperty("podSandboxId").GetString()!;
            var moved = r.GetProperty("containerId").GetString()!;
            var onA = Ticks(podA.Log);
            var lastOnA = onA[^1];
            await Until(() => Ticks(podB.Log).Any(t => t.Number > lastOnA.Number && t.At > lastOnA.At + FaultInWindow), "the migrated workload to tick on B for the fault-in window");
            var onB = Ticks(podB.Log).Where(t => t.Number > lastOnA.Number).ToList();
            var first = onB[0];
            if (first.Number != lastOnA.Number + 1)
            {
                throw new InvalidOperationException($"the workload on B went on from tick {first.Number}, A's last was {lastOnA.Number}: ticks were lost or repeated");
            }

            // A tick that read its clock on A before the freeze and printed on B carries the switch inside it: its
            // rewrite time holds the downtime, and the gap shows in the tick after it. Such ticks began before A's last
            // one could be followed by another there.
            var switched = onB.Where(t => t.At > lastOnA.At + TimeSpan.FromMilliseconds(2 * TickMs)).ToList();
            var resumed = switched.Count > 0 ? switched[0] : first;
            var usual = Median(onA.TakeLast(100).Select(t => t.WorkMs).ToList());
            var faultIn = switched.Where(t => t.At <= resumed.At + FaultInWindow).Sum(t => Math.Max(0, t.WorkMs - usual));
            var gap = onB.Take(3).Max(t => t.GapMs) - TickMs;

            // Every word of the memory, checked by the workload against what it wrote.
            await Crest(crest, [.. rb, "exec", moved, "/bin/busybox", "killall", "-USR1", "memory-dirtier"]);
            await Until(() => Read(podB.Log).Contains("verify ", StringComparison.Ordinal), "the workload's memory check on B");
            var verdict = Read(podB.Log).Split('\n').First(l => l.Contains("verify ", StringComparison.Ordinal));
            if (!verdict.Contains("verify ok", StringComparison.Ordinal))
            {
                throw new InvalidOperationException($"the memory did not arrive whole on B ({strategy}, {mib} MiB): {verdict}");
            }

            return new Migration(r.GetProperty("downtimeMs").GetDouble(), gap, r.GetProperty("frozenMs").GetDouble(), r.GetProperty("totalMs").GetDouble(), faultIn);
        }
        finally
        {
            await Crest(crest, [.. ra, "rmp", pod]);
            if (newPod is not null)
            {
                await Crest(crest, [.. rb, "rmp", newPod]);
            }
        }
    }

    private static List<Tick> Ticks(string log) =>
        [.. Read(log).Split('\n').Select(Tick.Parse).OfType<Tick>()];

    private static double Median(List<double> values)
    {
        values.Sort();
        return values.Count == 0 ? 0 : values.Count % 2 == 1 ? values[values.Count / 2] : (values[values.Count / 2 - 1] + values[values.Count / 2]) / 2;
    }

    private static (string Config, string Log) Pod(RunningSubject node, string name, string side)
    {
        var (config, logs) = PodWithLogs(node, name, side);
        return (config, Path.Combine(logs, "memory.log"));
    }

    /// <summary>A pod config on <paramref name="node"/> and its log directory.</summary>
    private static (string Config, string Logs) PodWithLogs(RunningSubject node, string name, string side)
    {
        var logs = node.Dir.CreateDirectory("logs-" + name);
        var config = node.Dir.Combine($"pod-{name}.json");
        File.WriteAllText(config, $$"""
            {"metadata": {"name": "{{name}}", "uid": "uid-{{name}}-{{side}}", "namespace": "bench", "attempt": 1}, "log_directory": "{{logs}}", "linux": {} }
            """);
        return (config, logs);
    }

    private static string Read(string path)
    {
        if (!File.Exists(path))
        {
            return "";
        }

        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(f);
        return reader.ReadToEnd();
    }

    private static async Task Until(Func<bool> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(60))
            {
                throw new TimeoutException($"bench: timed out waiting for {what}");
            }

            await Task.Delay(100);
        }
    }

    private static async Task<string> Crest(string crest, string[] args)
    {
        var start = new ProcessStartInfo(crest) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        start.Environment.Remove("CONTAINER_RUNTIME_ENDPOINT");
        using var p = Process.Start(start)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        return p.ExitCode == 0 ? await stdout : throw new InvalidOperationException($"crest {string.Join(' ', args)} failed ({p.ExitCode}): {await stderr}");
    }
}
