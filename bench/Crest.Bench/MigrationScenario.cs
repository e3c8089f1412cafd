using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Crest.TestKit;

namespace Crest.Bench;

/// <summary>
/// Live migration rows (issue 15, <c>--migration-only</c>): two crestd on this machine (own roots, sockets and CNI
/// bridges, one loopback registry), and <c>crest migrate</c> of a busybox awk process holding 64 or 256 MiB of touched
/// memory that logs a line every 0.1 s. Each run migrates a fresh workload from A to B; the downtime is the one crest
/// measures (the workload's last log line on A to its first on B), and the memory is checked on B (every line after
/// the switch must still see the string whole). Post-copy is refused by this version, so it has no rows.
/// </summary>
internal static class MigrationScenario
{
    public static readonly (string Name, int MiB)[] Workloads = [("64 MiB", 64), ("256 MiB", 256)];

    public static async Task<int> RunOnlyAsync(int runs, string output, string? crestdPath)
    {
        var report = new Report(runs, 0);
        await AddRowsAsync(report, runs, crestdPath);
        Directory.CreateDirectory(output);
        var stamp = DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture);
        var markdown = report.Markdown(["crest"], Environment.MachineName);
        await File.WriteAllTextAsync(Path.Combine(output, $"bench-migration-{stamp}.md"), markdown);
        await File.WriteAllTextAsync(Path.Combine(output, $"bench-migration-{stamp}.json"), report.Json());
        Console.WriteLine(markdown);
        Console.Error.WriteLine($"bench: wrote {Path.Combine(output, $"bench-migration-{stamp}.md")}");
        return 0;
    }

    public static async Task AddRowsAsync(Report report, int runs, string? crestdPath)
    {
        string? postCopyProblem = null;
        var crest = Subjects.BuiltPath("CrestPath");
        Console.Error.WriteLine($"bench: live migration stop-copy and post-copy between two crestd (64, 256 MiB), {runs} runs each");
        await using var registry = await LocalRegistry.StartAsync();
        var subject = Subjects.Crest(crestdPath);
        await using var a = await subject.StartAsync(writeCni: (_, cni) => CniFixture.WriteBridgeConflist(cni, "crest-bench-mig-a", "crbmiga", "10.129.0.0/16"));
        await using var b = await subject.StartAsync(writeCni: (_, cni) => CniFixture.WriteBridgeConflist(cni, "crest-bench-mig-b", "crbmigb", "10.130.0.0/16"));
        try
        {
            string[] ra = ["-r", "unix://" + a.Socket];
            string[] rb = ["-r", "unix://" + b.Socket];
            var image = $"{registry.Host}/bench/busybox:v1";
            var rootfs = a.Dir.Combine("rootfs.tar");
            await using (var f = File.Create(rootfs))
            await using (var t = new System.Formats.Tar.TarWriter(f, System.Formats.Tar.TarEntryFormat.Pax))
            {
                TestImages.BusyboxRootfs(t);
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
            foreach (var strategy in postCopyProblem is null ? new[] { "stop-copy", "post-copy" } : ["stop-copy"])
            {
                foreach (var (name, mib) in Workloads)
                {
                    for (var r = 0; r < runs; r++, n++)
                    {
                        var (downtime, frozen, total) = await MigrateOnceAsync(crest, a, ra, b, rb, image, (long)mib << 20, n, strategy);
                        report.Add($"migrate {strategy} {name}: downtime", "ms", "crest", downtime);
                        report.Add($"migrate {strategy} {name}: frozen", "ms", "crest", frozen);
                        report.Add($"migrate {strategy} {name}: total", "ms", "crest", total);
                    }
                }
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

        report.Note("migration rows: two crestd on this machine (own roots, sockets, CNI bridges; one loopback registry), `crest migrate --strategy stop-copy` of a fresh busybox awk process holding 64 or 256 MiB of touched memory and logging a line every 0.1 s. downtime: the workload's last CRI log line on A to its first on B, as crest prints it; frozen: freeze to the target running; total: the whole command, pre-staging included. Every run checks the memory on B (each line after the switch sees the string whole) and fails otherwise. post-copy rows: `--strategy post-copy`, the same workload; this workload reads its whole string (strlen) before each line, so it needs all its memory before its first line on B: the worst case for post-copy, whose downtime therefore includes the page transfer. " + (postCopyProblem is null ? "" : "No post-copy rows in this run: " + postCopyProblem));
    }

    private static async Task<(double Downtime, double Frozen, double Total)> MigrateOnceAsync(
        string crest, RunningSubject a, string[] ra, RunningSubject b, string[] rb, string image, long bytes, int n, string strategy)
    {
        var podA = Pod(a, $"mig{n}", "a");
        var podB = Pod(b, $"mig{n}", "b");
        var config = a.Dir.Combine($"memory-{n}.json");
        var script = $"BEGIN{{s=sprintf(\"%{bytes}s\",\"\"); while(1){{i++; print \"count \" i \" len \" length(s) \" mid \" (substr(s,{bytes / 2},4) == \"    \" ? \"ok\" : \"lost\"); fflush(); system(\"exec /bin/busybox sleep 0.1\")}}}}";
        await File.WriteAllTextAsync(config, $$"""
            {"metadata": {"name": "memory"}, "image": {"image": "{{image}}"},
             "command": ["/bin/busybox", "awk", {{JsonSerializer.Serialize(script)}}], "log_path": "memory.log", "linux": {} }
            """);
        var pod = (await Crest(crest, [.. ra, "runp", podA.Config])).Trim();
        var id = (await Crest(crest, [.. ra, "create", pod, config, podA.Config])).Trim();
        await Crest(crest, [.. ra, "start", id]);
        await Until(() => Read(podA.Log).Contains("count 3 ", StringComparison.Ordinal), $"the {bytes >> 20} MiB workload on A to count");

        var migrated = await Crest(crest, [.. ra, "migrate", id, "--to", "unix://" + b.Socket, "--pod-config", podB.Config, "--strategy", strategy, "-o", "json"]);
        using var doc = JsonDocument.Parse(migrated);
        var r = doc.RootElement;
        var newPod = r.GetProperty("podSandboxId").GetString()!;
        var lastOnA = Read(podA.Log).Split('\n').Last(l => l.Contains(" count ", StringComparison.Ordinal));
        var last = int.Parse(lastOnA.Split(" count ")[1].Split(' ')[0], CultureInfo.InvariantCulture);
        await Until(() => Read(podB.Log).Contains($"count {last + 3} ", StringComparison.Ordinal), "the migrated workload to count on B");
        var after = Read(podB.Log).Split('\n').SkipWhile(l => !l.Contains($"count {last + 1} ", StringComparison.Ordinal)).Where(l => l.Contains(" count ", StringComparison.Ordinal)).ToList();
        if (after.Count == 0 || after.Any(l => !l.EndsWith($" len {bytes} mid ok", StringComparison.Ordinal)))
        {
            throw new InvalidOperationException($"the memory did not arrive whole on B: {string.Join(" | ", after.Take(3))}");
        }

        await Crest(crest, [.. ra, "rmp", pod]);
        await Crest(crest, [.. rb, "rmp", newPod]);
        return (r.GetProperty("downtimeMs").GetDouble(), r.GetProperty("frozenMs").GetDouble(), r.GetProperty("totalMs").GetDouble());
    }

    private static (string Config, string Log) Pod(RunningSubject node, string name, string side)
    {
        var logs = node.Dir.CreateDirectory("logs-" + name);
        var config = node.Dir.Combine($"pod-{name}.json");
        File.WriteAllText(config, $$"""
            {"metadata": {"name": "{{name}}", "uid": "uid-{{name}}-{{side}}", "namespace": "bench", "attempt": 1}, "log_directory": "{{logs}}", "linux": {} }
            """);
        return (config, Path.Combine(logs, "memory.log"));
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
