using System.Text.Json;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

/// <summary>
/// <c>crest migrate</c> between two crestd nodes on this machine (<see cref="TwoNodes"/>), with real runc, conmon, CRIU,
/// CNI and a loopback registry: the counter moves and goes on from where it was, and a failed migration leaves exactly
/// one copy running, the source.
/// </summary>
[Collection(TwoNodes.Collection)]
public sealed class MigrationTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    internal static void RequireTools()
    {
        Requires.Root();
        Requires.Binary("conmon");
        Requires.Binary("criu");
        Requires.Binary("runc");
    }

    /// <summary>busybox pushed to the shared registry and pulled back on node A, so A's image has a registry digest.</summary>
    internal static async Task<string> RegistryBusyboxOnAAsync(TwoNodes nodes, bool motdAndRoot = false)
    {
        var image = $"{nodes.Registry.Host}/e2e/busybox:v1";
        var rootfs = nodes.A.Dir.Combine("rootfs.tar");
        await using (var f = File.Create(rootfs))
        await using (var t = new System.Formats.Tar.TarWriter(f, System.Formats.Tar.TarEntryFormat.Pax))
        {
            TestImages.BusyboxRootfs(t, motdAndRoot);
        }

        await RunAsync([.. nodes.A.R, "image", "import", rootfs, image]);
        await RunAsync([.. nodes.A.R, "image", "push", image]);
        await RunAsync([.. nodes.A.R, "rmi", image]);
        await RunAsync([.. nodes.A.R, "pull", image]);
        return image;
    }

    /// <summary>The counter running in a new pod on node A; its ID and log file once it has counted a little.</summary>
    internal static async Task<(string Id, string Log)> RunCounterOnAAsync(TwoNodes nodes, string image)
    {
        var pod = await WritePodAsync(nodes.A.Dir, "mig", "uid-mig-a");
        var podId = await nodes.A.Pods.RunAsync(pod);
        var config = await CounterWorkload.WriteConfigAsync(nodes.A.Dir, image);
        var id = await RunAsync([.. nodes.A.R, "create", podId, config, pod]);
        await RunAsync([.. nodes.A.R, "start", id]);
        var log = nodes.A.Dir.Combine("logs-mig", "counter.log");
        await CountPassesAsync(log, 3);
        return (id, log);
    }

    [Theory]
    [InlineData("stop-copy", true)]
    [InlineData("post-copy", true)]
    [InlineData("post-copy", false)]
    public async Task A_running_counter_migrates_to_the_other_node_and_counts_on_from_where_it_froze(string strategy, bool pageServerTls)
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("mig");
        if (strategy == "post-copy")
        {
            await RequirePostCopyAsync(nodes);
        }

        var image = await RegistryBusyboxOnAAsync(nodes);
        var (id, logA) = await RunCounterOnAAsync(nodes, image);
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");

        var migrated = await Binaries.RunCrestAsync([.. nodes.A.R, "migrate", id, "--to", nodes.B.Crestd.Endpoint, "--pod-config", podB, "--strategy", strategy, "-o", "json",
            .. pageServerTls ? Array.Empty<string>() : ["--no-page-server-tls"]]);

        Assert.True(migrated.ExitCode == 0, $"migrate failed ({migrated.ExitCode}): {migrated.Stderr}\nA: {nodes.A.Crestd.Log}\nB: {nodes.B.Crestd.Log}");
        using var report = JsonDocument.Parse(migrated.Stdout);
        var r = report.RootElement;
        var newId = r.GetProperty("containerId").GetString()!;
        Assert.Equal(strategy, r.GetProperty("strategy").GetString());
        if (strategy == "post-copy")
        {
            // Post-copy is over TLS unless turned off, and no key material outlives the transfer on either node.
            Assert.Contains(pageServerTls ? " over TLS" : " in the clear", migrated.Stderr, StringComparison.Ordinal);
            Assert.Empty(PageTransferKeys(nodes.A));
            Assert.Empty(PageTransferKeys(nodes.B));
        }

        // Progress went to stderr, step by step: pre-staging before the freeze.
        Assert.True(migrated.Stderr.IndexOf("pre-stage:", StringComparison.Ordinal) < migrated.Stderr.IndexOf("freeze:", StringComparison.Ordinal), migrated.Stderr);
        Assert.True(r.GetProperty("bytesBeforeSwitch").GetInt64() > 0, "the base image was not pre-staged on B: " + migrated.Stdout);
        Assert.True(r.GetProperty("bytesDuringSwitch").GetInt64() > 0);
        var downtime = r.GetProperty("downtimeMs").GetInt64();
        Assert.InRange(downtime, 1, 60_000);

        // Exactly one copy: none left on A, one running on B.
        Assert.Equal("", await RunAsync([.. nodes.A.R, "ps", "-a", "-q"]));
        Assert.Equal(newId, await RunAsync([.. nodes.B.R, "ps", "-q"]));
        Assert.Equal("CONTAINER_RUNNING", await StateAsync(nodes.B.R, newId));

        // The counter went on from its last count on A, with no count lost or repeated.
        var lastOnA = LastCount(await File.ReadAllTextAsync(logA, Ct));
        var logB = nodes.B.Dir.Combine("logs-mig", "counter.log");
        var log = await CountPassesAsync(logB, lastOnA + 3, "the migrated counter does not count on B: " + nodes.B.Crestd.Log);
        var counts = CountLine().Matches(log).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(Enumerable.Range(1, counts.Count), counts);
        Assert.Contains(lastOnA + 1, counts);
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.A.Dir.Combine("root", "migrations")));
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.B.Dir.Combine("root", "migrations")));
        var variant = strategy + (strategy == "post-copy" ? (pageServerTls ? " (TLS)" : " (no TLS)") : "");
        TestContext.Current.SendDiagnosticMessage($"{variant} migration: downtime {downtime} ms, frozen {r.GetProperty("frozenMs")} ms, {r.GetProperty("bytesDuringSwitch")} bytes during the switch, {r.GetProperty("bytesAfterSwitch")} after\n{migrated.Stderr}");
        TestContext.Current.TestOutputHelper?.WriteLine($"{variant} counter: downtime {downtime} ms, frozen {r.GetProperty("frozenMs")} ms, {r.GetProperty("bytesDuringSwitch")} bytes during the switch, {r.GetProperty("bytesAfterSwitch")} after");
    }

    /// <summary>
    /// A workload holding <paramref name="mib"/> MiB of touched memory (busybox awk: a string of that size, and a
    /// "count N len L mid ok" line every 0.1 s, ok while the string's middle still holds its spaces) migrates stop-copy; the memory arrives whole (the string's length and content
    /// are checked after the switch), and the measured downtime is reported. It has a pid namespace of its own, as the
    /// kubelet asks for, which the restore on the target must ask for again.
    /// </summary>
    [Theory]
    [InlineData(64)]
    [InlineData(256)]
    public async Task A_workload_holding_memory_migrates_with_it_and_its_downtime_is_measured(int mib)
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migmem");
        var image = await RegistryBusyboxOnAAsync(nodes);
        var bytes = (long)mib << 20;
        var id = await RunMemoryWorkloadOnAAsync(nodes, image, bytes);
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");

        var migrated = await Binaries.RunCrestAsync([.. nodes.A.R, "migrate", id, "--to", nodes.B.Crestd.Endpoint, "--pod-config", podB, "-o", "json"]);

        Assert.True(migrated.ExitCode == 0, $"migrate failed ({migrated.ExitCode}): {migrated.Stderr}\nB: {nodes.B.Crestd.Log}");
        using var report = JsonDocument.Parse(migrated.Stdout);
        var r = report.RootElement;
        var lastOnA = LastCount(await File.ReadAllTextAsync(nodes.A.Dir.Combine("logs-mig", "memory.log"), Ct));
        var logB = nodes.B.Dir.Combine("logs-mig", "memory.log");
        var log = await Eventually.UntilAsync(() => ReadLogAsync(logB), l => l.Contains($"count {lastOnA + 3} ", StringComparison.Ordinal),
            "the migrated workload to count on", describe: l => l[^Math.Min(400, l.Length)..], ct: Ct);
        // The memory arrived whole: every line after the switch still sees the string, with its length and content.
        var after = log.Split('\n').SkipWhile(l => !l.Contains($"count {lastOnA + 1} ", StringComparison.Ordinal)).Where(l => l.Contains("count", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(after);
        Assert.All(after, l => Assert.EndsWith($" len {bytes} mid ok", l, StringComparison.Ordinal));
        Assert.True(r.GetProperty("bytesDuringSwitch").GetInt64() > bytes, $"the checkpoint moved {r.GetProperty("bytesDuringSwitch")} bytes, less than the {bytes} the workload holds");
        TestContext.Current.TestOutputHelper?.WriteLine(
            $"stop-copy {mib} MiB: downtime {r.GetProperty("downtimeMs")} ms, frozen {r.GetProperty("frozenMs")} ms, total {r.GetProperty("totalMs")} ms, {r.GetProperty("bytesDuringSwitch")} bytes during the switch\n{migrated.Stderr}");
    }

    /// <summary>
    /// The rootfs moves before the freeze: a workload that wrote 20 MiB of random bytes, deleted an image file and a file
    /// of its own, and keeps appending a line to a small file while it runs. The first rootfs round carries the large
    /// file, the frozen window only the last lines; on the target the large file's checksum, every line of the small file
    /// and the deletions are as on the source.
    /// </summary>
    [Fact]
    public async Task The_rootfs_moves_in_rounds_before_the_freeze_and_the_frozen_window_carries_only_its_last_changes()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migfs");
        var image = await RegistryBusyboxOnAAsync(nodes, motdAndRoot: true);
        var pod = await WritePodAsync(nodes.A.Dir, "mig", "uid-mig-a");
        var podId = await nodes.A.Pods.RunAsync(pod);
        const string script = "rm /etc/motd; mkdir -p /data; /bin/busybox dd if=/dev/urandom of=/data/big bs=1048576 count=20 2>/dev/null; "
            + "echo \"big $(/bin/busybox sha256sum /data/big)\"; echo doomed > /data/doomed; "
            + "i=0; while true; do i=$((i+1)); echo \"line $i\" >> /data/small; [ $i = 2 ] && rm /data/doomed; echo count $i; sleep 0.1; done";
        var config = await CounterWorkload.WriteConfigAsync(nodes.A.Dir, image, script: script);
        var id = await RunAsync([.. nodes.A.R, "create", podId, config, pod]);
        await RunAsync([.. nodes.A.R, "start", id]);
        var logA = nodes.A.Dir.Combine("logs-mig", "counter.log");
        var started = await CountPassesAsync(logA, 5);
        var bigSum = System.Text.RegularExpressions.Regex.Match(started, "big ([0-9a-f]{64})").Groups[1].Value;
        Assert.Equal(64, bigSum.Length);
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");

        var migrated = await Binaries.RunCrestAsync([.. nodes.A.R, "migrate", id, "--to", nodes.B.Crestd.Endpoint, "--pod-config", podB, "-o", "json"]);

        Assert.True(migrated.ExitCode == 0, $"migrate failed ({migrated.ExitCode}): {migrated.Stderr}\nA: {nodes.A.Crestd.Log}\nB: {nodes.B.Crestd.Log}");
        using var report = JsonDocument.Parse(migrated.Stdout);
        var r = report.RootElement;
        var newId = r.GetProperty("containerId").GetString()!;
        var rounds = r.GetProperty("rootfsRounds").EnumerateArray().ToList();
        // Round 1 carried the large file while the container ran; the frozen window only what changed since the last round.
        Assert.NotEmpty(rounds);
        Assert.True(rounds[0].GetProperty("bytes").GetInt64() >= 20L << 20, "round 1 did not carry the 20 MiB file: " + migrated.Stdout);
        Assert.Contains("pre-stage: rootfs round 1:", migrated.Stderr, StringComparison.Ordinal);
        Assert.True(rounds[0].GetProperty("deleted").GetInt64() >= 1, "round 1 did not carry the deletion of the image's /etc/motd: " + migrated.Stdout);
        var frozenRootfs = r.GetProperty("frozenRootfsBytes").GetInt64();
        Assert.True(frozenRootfs < 1L << 20, $"the frozen window carried {frozenRootfs} rootfs bytes: " + migrated.Stderr);
        Assert.True(r.GetProperty("bytesBeforeSwitch").GetInt64() >= 20L << 20, "the rounds are not counted before the switch: " + migrated.Stdout);
        Assert.True(r.GetProperty("bytesDuringSwitch").GetInt64() < 20L << 20, "the checkpoint carried the large file again: " + migrated.Stdout);

        // On the target: the large file whole, every line of the small one, the deletions kept.
        var lastOnA = LastCount(await File.ReadAllTextAsync(logA, Ct));
        await CountPassesAsync(nodes.B.Dir.Combine("logs-mig", "counter.log"), lastOnA + 2, "the migrated workload does not run on B: " + nodes.B.Crestd.Log);
        var sum = await RunAsync([.. nodes.B.R, "exec", "-s", newId, "/bin/busybox", "sha256sum", "/data/big"]);
        Assert.StartsWith(bigSum, sum, StringComparison.Ordinal);
        var small = (await RunAsync([.. nodes.B.R, "exec", "-s", newId, "/bin/busybox", "cat", "/data/small"])).Split('\n');
        Assert.True(small.Length > lastOnA, $"the small file on B has {small.Length} lines, the source wrote {lastOnA}");
        Assert.Equal(Enumerable.Range(1, small.Length).Select(i => $"line {i}"), small);
        Assert.Equal(0, (await Binaries.RunCrestAsync([.. nodes.B.R, "exec", "-s", newId, "/bin/sh", "-c", "test -e /root"])).ExitCode);
        Assert.Equal(1, (await Binaries.RunCrestAsync([.. nodes.B.R, "exec", "-s", newId, "/bin/sh", "-c", "test -e /etc/motd"])).ExitCode);
        Assert.Equal(1, (await Binaries.RunCrestAsync([.. nodes.B.R, "exec", "-s", newId, "/bin/sh", "-c", "test -e /data/doomed"])).ExitCode);
        // Nothing staged is left on either node.
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.A.Dir.Combine("root", "migrations")));
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.B.Dir.Combine("root", "migrations")));

        // The way back without rounds, for comparison: the frozen window carries the large file.
        var podA = await WritePodAsync(nodes.A.Dir, "mig", "uid-mig-a2");
        var back = await Binaries.RunCrestAsync([.. nodes.B.R, "migrate", newId, "--to", nodes.A.Crestd.Endpoint, "--pod-config", podA, "--no-rootfs-rounds", "-o", "json"]);
        Assert.True(back.ExitCode == 0, $"migrate back failed ({back.ExitCode}): {back.Stderr}\nA: {nodes.A.Crestd.Log}\nB: {nodes.B.Crestd.Log}");
        using var backReport = JsonDocument.Parse(back.Stdout);
        var b = backReport.RootElement;
        Assert.Empty(b.GetProperty("rootfsRounds").EnumerateArray());
        Assert.True(b.GetProperty("frozenRootfsBytes").GetInt64() >= 20L << 20, "without rounds the frozen window did not carry the large file: " + back.Stdout);
        var backId = b.GetProperty("containerId").GetString()!;
        Assert.StartsWith(bigSum, await RunAsync([.. nodes.A.R, "exec", "-s", backId, "/bin/busybox", "sha256sum", "/data/big"]), StringComparison.Ordinal);
        TestContext.Current.TestOutputHelper?.WriteLine(
            $"rootfs rounds: {string.Join(", ", rounds.Select(x => $"{x.GetProperty("files")} files {x.GetProperty("bytes")} bytes"))}; frozen window rootfs {frozenRootfs} bytes, "
            + $"{r.GetProperty("bytesDuringSwitch")} bytes during the switch, frozen {r.GetProperty("frozenMs")} ms, downtime {r.GetProperty("downtimeMs")} ms\n"
            + $"without rounds: frozen window rootfs {b.GetProperty("frozenRootfsBytes")} bytes, {b.GetProperty("bytesDuringSwitch")} bytes during the switch, frozen {b.GetProperty("frozenMs")} ms, downtime {b.GetProperty("downtimeMs")} ms\n{migrated.Stderr}\n{back.Stderr}");
    }

    [Fact]
    public async Task A_restore_that_fails_on_the_target_leaves_the_source_running_and_nothing_on_the_target()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migfail");
        // Imported on A only: no registry digest to pre-stage, and B cannot find the base image when it restores.
        await ImportBusyboxAsync(nodes.A.Dir, nodes.A.R);
        var (id, logA) = await RunCounterOnAAsync(nodes, "localhost/e2e/busybox:v1");
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");

        var migrated = await Binaries.RunCrestAsync([.. nodes.A.R, "migrate", id, "--to", nodes.B.Crestd.Endpoint, "--pod-config", podB]);

        Assert.Equal(1, migrated.ExitCode);
        Assert.Contains("freeze:", migrated.Stderr, StringComparison.Ordinal);
        Assert.Contains("undone: the container runs on", migrated.Stderr, StringComparison.Ordinal);
        // The source was resumed: it runs and counts on.
        Assert.Equal("CONTAINER_RUNNING", await StateAsync(nodes.A.R, id));
        var before = LastCount(await File.ReadAllTextAsync(logA, Ct));
        await CountPassesAsync(logA, before + 2, "the source did not resume after the failed migration");
        // Nothing on B: no pod, no container, no archive.
        Assert.Equal("", await RunAsync([.. nodes.B.R, "pods", "-q"]));
        Assert.Equal("", await RunAsync([.. nodes.B.R, "ps", "-a", "-q"]));
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.B.Dir.Combine("root", "migrations")));
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.A.Dir.Combine("root", "migrations")));
    }

    [Fact]
    public async Task Pre_copy_is_refused_with_the_reason_and_crest_info_reports_the_strategies()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migstrat");
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");

        var info = JsonDocument.Parse(await RunAsync([.. nodes.A.R, "info", "-o", "json"]));
        var strategies = info.RootElement.GetProperty("liveMigration").EnumerateArray().ToDictionary(s => s.GetProperty("strategy").GetString()!, s => s);
        Assert.True(strategies["stop-copy"].GetProperty("supported").GetBoolean());
        var (dirty, _) = await Tool("criu", "check", "--feature", "mem_dirty_track");
        Assert.Equal(dirty == 0, info.RootElement.GetProperty("criu").GetProperty("memoryTracking").GetBoolean());
        var (uffd, _) = await Tool("criu", "check", "--feature", "uffd-noncoop");
        Assert.Equal(uffd == 0, info.RootElement.GetProperty("criu").GetProperty("lazyPages").GetBoolean());

        // Every strategy the node cannot do is refused with its reason, before anything happens.
        foreach (var strategy in strategies.Where(s => !s.Value.GetProperty("supported").GetBoolean()).Select(s => s.Key))
        {
            var refused = await Binaries.RunCrestAsync([.. nodes.A.R, "migrate", "any", "--to", nodes.B.Crestd.Endpoint, "--pod-config", podB, "--strategy", strategy]);

            Assert.Equal(1, refused.ExitCode);
            Assert.Contains($"--strategy {strategy} is refused by", refused.Stderr, StringComparison.Ordinal);
            Assert.Contains(strategies[strategy].GetProperty("reason").GetString()!, refused.Stderr, StringComparison.Ordinal);
        }

        if (dirty != 0)
        {
            Assert.False(strategies["pre-copy"].GetProperty("supported").GetBoolean());
            Assert.Contains("Dirty tracking is OFF", strategies["pre-copy"].GetProperty("reason").GetString(), StringComparison.Ordinal);
        }

        Assert.Equal("", await RunAsync([.. nodes.B.R, "pods", "-q"]));
    }

    /// <summary>What a node keeps of post-copy page transfer key pairs (its root's page-tls directory).</summary>
    internal static IEnumerable<string> PageTransferKeys(TwoNodes.Node node)
    {
        var dir = node.Dir.Combine("root", "page-tls");
        return Directory.Exists(dir) ? Directory.EnumerateFileSystemEntries(dir, "*", SearchOption.AllDirectories).ToList() : [];
    }

    /// <summary>Skips unless this node offers post-copy (userfaultfd, and a pipe limit CRIU's page server can live with).</summary>
    internal static async Task RequirePostCopyAsync(TwoNodes nodes)
    {
        using var info = JsonDocument.Parse(await RunAsync([.. nodes.A.R, "info", "-o", "json"]));
        var postCopy = info.RootElement.GetProperty("liveMigration").EnumerateArray().Single(s => s.GetProperty("strategy").GetString() == "post-copy");
        Assert.SkipUnless(postCopy.GetProperty("supported").GetBoolean(), "post-copy is not available on this node: " + postCopy.GetProperty("reason").GetString());
    }

    /// <summary>
    /// The awk workload of <see cref="A_workload_holding_memory_migrates_with_it_and_its_downtime_is_measured"/>:
    /// <paramref name="bytes"/> of spaces in one string and a "count N len L mid ok" line every 0.1 s. busybox awk's
    /// length() is strlen(), so each line reads the whole string: a page that arrived as zeros shortens it.
    /// </summary>
    /// <summary>
    /// What a memory workload's command line carries to tell it from another test's running at the same time (the
    /// nodes' directory): its copies on either node are the processes whose command line holds it. (busybox awk writes
    /// NULs into its program text as it parses it, so /proc shows the quotes around it as spaces.)
    /// </summary>
    internal static string MemoryWorkloadTag(TwoNodes nodes) => Path.GetFileName(nodes.A.Dir.Path);

    /// <summary>Writes the config of a memory workload named <paramref name="name"/> holding <paramref name="bytes"/> (logging to NAME.log) into <paramref name="config"/>.</summary>
    internal static Task WriteMemoryWorkloadConfigAsync(TwoNodes nodes, string config, string name, string image, long bytes)
    {
        var script = $"BEGIN{{tag=\"{MemoryWorkloadTag(nodes)}\"; s=sprintf(\"%{bytes}s\",\"\"); while(1){{i++; print \"count \" i \" len \" length(s) \" mid \" (substr(s,{bytes / 2},4) == \"    \" ? \"ok\" : \"lost\"); fflush(); system(\"exec /bin/busybox sleep 0.1\")}}}}";
        return File.WriteAllTextAsync(config, $$"""
            {"metadata": {"name": "{{name}}"}, "image": {"image": "{{image}}"},
             "command": ["/bin/busybox", "awk", {{JsonSerializer.Serialize(script)}}], "log_path": "{{name}}.log",
             "linux": {"security_context": {"namespace_options": {"pid": "CONTAINER"} } } }
            """, Ct);
    }

    internal static async Task<string> RunMemoryWorkloadOnAAsync(TwoNodes nodes, string image, long bytes)
    {
        var pod = await WritePodAsync(nodes.A.Dir, "mig", "uid-mig-a");
        var podId = await nodes.A.Pods.RunAsync(pod);
        var config = nodes.A.Dir.Combine("memory.json");
        await WriteMemoryWorkloadConfigAsync(nodes, config, "memory", image, bytes);
        var id = await RunAsync([.. nodes.A.R, "create", podId, config, pod]);
        await RunAsync([.. nodes.A.R, "start", id]);
        await Eventually.UntilAsync(() => ReadLogAsync(nodes.A.Dir.Combine("logs-mig", "memory.log")), log => log.Contains("count 3 ", StringComparison.Ordinal),
            $"the {bytes >> 20} MiB workload to start counting", describe: l => l, ct: Ct);
        return id;
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_workload_holding_memory_migrates_post_copy_and_its_memory_arrives_whole_while_it_runs(bool pageServerTls)
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migpost");
        await RequirePostCopyAsync(nodes);
        var image = await RegistryBusyboxOnAAsync(nodes);
        const long bytes = 64L << 20;
        var id = await RunMemoryWorkloadOnAAsync(nodes, image, bytes);
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");

        var migrated = await Binaries.RunCrestAsync([.. nodes.A.R, "migrate", id, "--to", nodes.B.Crestd.Endpoint, "--pod-config", podB, "--strategy", "post-copy", "-o", "json",
            .. pageServerTls ? Array.Empty<string>() : ["--no-page-server-tls"]]);

        Assert.True(migrated.ExitCode == 0, $"migrate failed ({migrated.ExitCode}): {migrated.Stderr}\nA: {nodes.A.Crestd.Log}\nB: {nodes.B.Crestd.Log}");
        using var report = JsonDocument.Parse(migrated.Stdout);
        var r = report.RootElement;
        var newId = r.GetProperty("containerId").GetString()!;
        Assert.Equal("post-copy", r.GetProperty("strategy").GetString());
        Assert.Contains(pageServerTls ? " over TLS" : " in the clear", migrated.Stderr, StringComparison.Ordinal);
        // The archive left the memory out; the memory came after the switch, from the source's page server.
        Assert.True(r.GetProperty("bytesDuringSwitch").GetInt64() < bytes / 4, $"the post-copy archive holds {r.GetProperty("bytesDuringSwitch")} bytes");
        Assert.True(r.GetProperty("bytesAfterSwitch").GetInt64() >= bytes, $"only {r.GetProperty("bytesAfterSwitch")} bytes arrived after the switch");
        Assert.Contains("post-copy: all ", migrated.Stderr, StringComparison.Ordinal);

        // Exactly one copy: none left on A, one running on B.
        Assert.Equal("", await RunAsync([.. nodes.A.R, "ps", "-a", "-q"]));
        Assert.Equal(newId, await RunAsync([.. nodes.B.R, "ps", "-q"]));
        var lastOnA = LastCount(await File.ReadAllTextAsync(nodes.A.Dir.Combine("logs-mig", "memory.log"), Ct));
        var log = await Eventually.UntilAsync(() => ReadLogAsync(nodes.B.Dir.Combine("logs-mig", "memory.log")), l => l.Contains($"count {lastOnA + 3} ", StringComparison.Ordinal),
            "the post-copy migrated workload to count on", describe: l => l[^Math.Min(400, l.Length)..], ct: Ct);
        // It went on from its last count on A, and every line since saw the whole string.
        var counts = CountLine().Matches(log).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(Enumerable.Range(1, counts.Count), counts);
        var after = log.Split('\n').SkipWhile(l => !l.Contains($"count {lastOnA + 1} ", StringComparison.Ordinal)).Where(l => l.Contains("count", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(after);
        Assert.All(after, l => Assert.EndsWith($" len {bytes} mid ok", l, StringComparison.Ordinal));
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.A.Dir.Combine("root", "migrations")));
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.B.Dir.Combine("root", "migrations")));
        TestContext.Current.TestOutputHelper?.WriteLine(
            $"post-copy 64 MiB ({(pageServerTls ? "TLS" : "no TLS")}): downtime {r.GetProperty("downtimeMs")} ms, frozen {r.GetProperty("frozenMs")} ms, pages {r.GetProperty("pageTransferMs")} ms, total {r.GetProperty("totalMs")} ms, "
            + $"{r.GetProperty("bytesDuringSwitch")} bytes during the switch, {r.GetProperty("bytesAfterSwitch")} after\n{migrated.Stderr}");
    }

    /// <summary>Exactly one copy of this test's memory workload runs on the machine (on either node).</summary>
    internal static void AssertOneMemoryWorkload(TwoNodes nodes)
    {
        var copies = ProcessesWith("busybox", "awk", MemoryWorkloadTag(nodes));
        Assert.True(copies.Count == 1, $"{copies.Count} copies of the workload tagged {MemoryWorkloadTag(nodes)} run; busybox awk processes: "
            + string.Join(" | ", ProcessesWith("busybox", "awk").Select(pid => $"{pid}: {CommandLineOf(pid)[..Math.Min(200, CommandLineOf(pid).Length)]}")));
    }

    private static string CommandLineOf(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' ');
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return "(gone)";
        }
    }

    /// <summary>Processes whose command line contains every one of <paramref name="words"/>.</summary>
    internal static List<int> ProcessesWith(params string[] words)
    {
        var found = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid))
            {
                continue;
            }

            try
            {
                var cmdline = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ');
                if (words.All(w => cmdline.Contains(w, StringComparison.Ordinal)))
                {
                    found.Add(pid);
                }
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
        }

        return found;
    }

    [Fact]
    public async Task A_post_copy_whose_page_source_dies_kills_the_target_copy_and_the_source_runs_on_exactly_once()
    {
        RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migpostfail");
        await RequirePostCopyAsync(nodes);
        var image = await RegistryBusyboxOnAAsync(nodes);
        // Large enough that its pages are still streaming when the page source is killed.
        const long bytes = 512L << 20;
        var id = await RunMemoryWorkloadOnAAsync(nodes, image, bytes);
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");

        var migrating = Binaries.RunCrestAsync([.. nodes.A.R, "migrate", id, "--to", nodes.B.Crestd.Endpoint, "--pod-config", podB, "--strategy", "post-copy"]);
        // The page source dies while B fetches from it: SIGKILL to A's runc checkpoint and its CRIU.
        var rootA = nodes.A.Dir.Combine("root");
        var rootB = nodes.B.Dir.Combine("root");
        // Once B's restore handed the processes over (they run and fault pages in), the page source dies.
        bool RestoredOnB() => Directory.Exists(Path.Combine(rootB, "containers"))
            && Directory.EnumerateFiles(Path.Combine(rootB, "containers"), "restore.log", SearchOption.AllDirectories)
                .Any(f => File.ReadAllText(f).Contains("Restore finished successfully", StringComparison.Ordinal));
        // ... and B recorded it RUNNING, so its StartContainer answered: a page source killed while that call is still
        // out can fail the call itself (its lazy-pages watchdog kills the copy), a failure other than the transfer's.
        await Eventually.UntilAsync(async () => migrating.IsCompleted || (RestoredOnB() && (await RunAsync([.. nodes.B.R, "ps", "-q"])).Length > 0),
            "B's post-copy restore to finish and its container to run", TimeSpan.FromSeconds(60), Ct);
        if (migrating.IsCompleted)
        {
            Assert.Fail("the migration ended before its page source could be killed: " + (await migrating).Stderr);
        }
        var runcCheckpoint = ProcessesWith("checkpoint", "--lazy-pages", rootA);
        Assert.NotEmpty(runcCheckpoint);
        foreach (var pid in runcCheckpoint)
        {
            // runc leads the process group of the CRIU it started.
            _ = await Tool("kill", "-KILL", "--", "-" + pid.ToString(System.Globalization.CultureInfo.InvariantCulture));
        }

        var migrated = await migrating;

        Assert.Equal(1, migrated.ExitCode);
        // Whole stderr in the message: the sub-string assertion shows only its first line.
        Assert.True(migrated.Stderr.Contains("broke", StringComparison.Ordinal), migrated.Stderr);
        Assert.True(migrated.Stderr.Contains("undone: the container runs on", StringComparison.Ordinal), migrated.Stderr);
        // Exactly one copy: nothing on B, the source on A resumed and counting on, its memory whole.
        Assert.Equal("", await RunAsync([.. nodes.B.R, "ps", "-a", "-q"]));
        Assert.Equal("CONTAINER_RUNNING", await StateAsync(nodes.A.R, id));
        var logA = nodes.A.Dir.Combine("logs-mig", "memory.log");
        var before = LastCount(await File.ReadAllTextAsync(logA, Ct));
        var log = await Eventually.UntilAsync(() => ReadLogAsync(logA), l => LastCount(l) > before + 2,
            "the source to count on after the failed post-copy", describe: l => l[^Math.Min(400, l.Length)..], ct: Ct);
        Assert.All(log.Split('\n').Where(l => l.Contains("count", StringComparison.Ordinal)), l => Assert.EndsWith($" len {bytes} mid ok", l, StringComparison.Ordinal));
        // One copy of the workload on this machine: the source's.
        AssertOneMemoryWorkload(nodes);
        TestContext.Current.TestOutputHelper?.WriteLine(migrated.Stderr);
    }
}
