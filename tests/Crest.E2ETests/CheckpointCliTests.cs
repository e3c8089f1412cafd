using System.Diagnostics;
using System.Formats.Tar;
using System.Text.Json;
using System.Text.RegularExpressions;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

/// <summary>
/// Checkpoint and restore end to end with real runc, conmon, CRIU and CNI: crestd and crest as an operator runs them,
/// checkpointctl as the archive oracle.
/// </summary>
public partial class CheckpointCliTests
{
    private const string RestoreOn = "[restore]\nvia_create = true\n";
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>The counter's kubelet metadata, with an annotation a restore must drop and a label a restore replaces.</summary>
    private const string CounterMetadata = """
        "annotations": {"io.kubernetes.container.hash": "A", "io.kubernetes.container.restartCount": "0",
                        "cdi.k8s.io/device": "gpu", "safe.annotation": "true"},
        "labels": {"io.kubernetes.container.name": "counter", "generation": "one"},
        """;

    /// <summary>A test's crestd with the busybox image, its pod and counter configs, and the pods it owns: removed, then crestd stopped, when the test ends.</summary>
    private sealed record Setup(CrestdProcess Crestd, string[] R, string PodConfig, string CounterConfig) : IAsyncDisposable
    {
        public OwnedPods Pods { get; } = new(R);

        public async ValueTask DisposeAsync()
        {
            try
            {
                await Pods.DisposeAsync();
            }
            finally
            {
                await Crestd.DisposeAsync();
            }
        }
    }

    private static void RequireCheckpointTools()
    {
        Requires.Root();
        Requires.Binary("conmon");
        Requires.Binary("criu");
        Requires.Binary("runc");
        Requires.Binary("checkpointctl");
    }

    private static async Task<Setup> StartAsync(TempDir dir, string extraConfig = RestoreOn, string podName = "counter", string uid = "uid-1", IDictionary<string, string>? environment = null)
    {
        var crestd = await CrestdProcess.StartReadyAsync(dir, extraConfig, environment);
        try
        {
            string[] r = ["-r", crestd.Endpoint];
            await ImportBusyboxAsync(dir, r, motdAndRoot: true);
            var pod = await WritePodAsync(dir, podName, uid);
            var counter = await CounterWorkload.WriteConfigAsync(dir, "localhost/e2e/busybox:v1", CounterMetadata);
            return new Setup(crestd, r, pod, counter);
        }
        catch
        {
            await crestd.DisposeAsync();
            throw;
        }
    }

    /// <summary>Runs the setup's pod and starts the counter in it.</summary>
    private static async Task<(string PodId, string ContainerId)> RunCounterAsync(Setup s)
    {
        var podId = await s.Pods.RunAsync(s.PodConfig);
        var id = await RunAsync([.. s.R, "create", podId, s.CounterConfig, s.PodConfig]);
        await RunAsync([.. s.R, "start", id]);
        return (podId, id);
    }

    [Fact]
    public async Task A_running_counter_is_checkpointed_and_restored_into_a_new_pod_where_it_continues()
    {
        RequireCheckpointTools();
        using var dir = new TempDir("crest-e2e-cr");
        await using var s = await StartAsync(dir);
        var crestd = s.Crestd;
        var r = s.R;
        var (podId, id) = await RunCounterAsync(s);
        var logFile = dir.Combine("logs-counter", "counter.log");
        await CountPassesAsync(logFile, 3);
        await RunAsync([.. r, "exec", "-s", id, "/bin/sh", "-c", "touch /root/testfile && rm /etc/motd"]);

        var archive = dir.Combine("cp.tar");
        var checkpoint = await Binaries.RunCrestAsync([.. r, "checkpoint", "--stats", "--export", archive, id[..12]]);
        Assert.True(checkpoint.ExitCode == 0, checkpoint.Stderr + crestd.Log);
        Assert.Contains("frozen time", checkpoint.Stdout, StringComparison.Ordinal);
        Assert.Matches(@"pages written\s+[1-9]\d*", checkpoint.Stdout);

        // The container keeps running (CRI semantics): its log keeps growing, and it is not left paused.
        var atCheckpoint = LastCount(await File.ReadAllTextAsync(logFile, Ct));
        await CountPassesAsync(logFile, atCheckpoint, "the container stopped counting after the checkpoint");
        Assert.Equal("CONTAINER_RUNNING", (await InspectAsync(r, id)).GetProperty("status").GetProperty("state").GetString());

        // The archive: 0600, uncompressed tar, the files every engine reads.
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(archive));
        var names = new List<string>();
        string configDump = "", archivedLog = "", dumpLog = "";
        await using (var f = File.OpenRead(archive))
        using (var tar = new TarReader(f))
        {
            while (await tar.GetNextEntryAsync(copyData: true, Ct) is { } e)
            {
                names.Add(e.Name);
                if (e.Name is "config.dump" or "container.log" or "dump.log")
                {
                    using var reader = new StreamReader(e.DataStream!);
                    var text = await reader.ReadToEndAsync(Ct);
                    switch (e.Name)
                    {
                        case "config.dump": configDump = text; break;
                        case "container.log": archivedLog = text; break;
                        default: dumpLog = text; break;
                    }
                }
            }
        }

        Assert.Subset(names.ToHashSet(), new HashSet<string> { "config.dump", "spec.dump", "status.dump", "checkpoint/inventory.img", "stats-dump", "rootfs-diff.tar", "deleted.files", "container.log", "dump.log" });
        // runc handed CRIU the container's own configuration (org.criu.config), which Crest wrote for this dump:
        // no TCP connection moves, so CRIU's network lock is skipped (ContainerDumpTests has the file's content).
        Assert.Contains($"Parsing config file {dir.Combine("root", "containers", id, "criu.conf")}", dumpLog, StringComparison.Ordinal);
        using (var config = JsonDocument.Parse(configDump))
        {
            Assert.Equal(id, config.RootElement.GetProperty("id").GetString());
            Assert.Equal("runc", config.RootElement.GetProperty("runtime").GetString());
            Assert.Equal("localhost/e2e/busybox:v1", config.RootElement.GetProperty("rootfsImageName").GetString());
            Assert.True(config.RootElement.GetProperty("checkpointedTime").GetDateTimeOffset() > config.RootElement.GetProperty("createdTime").GetDateTimeOffset());
            Assert.False(config.RootElement.GetProperty("restored").GetBoolean());
        }

        // checkpointctl (Debian) reads it: the oracle for the archive format.
        {
            var show = await Tool("checkpointctl", "show", archive);
            Assert.True(show.ExitCode == 0, show.Output);
            Assert.Matches(@"counter\s+localhost/e2e/busybox:v1\s+" + id[..12] + @"\s+runc", show.Output);
            var inspect = await Tool("checkpointctl", "inspect", "--all", archive);
            Assert.True(inspect.ExitCode == 0, inspect.Output);
            Assert.Contains("Pages written", inspect.Output, StringComparison.Ordinal);
        }

        var lastBefore = LastCount(archivedLog);
        Assert.True(lastBefore > 0, "the archive's log copy holds the counter's lines");

        // Remove the original and its pod; restore into a new pod with another name and UID.
        await RunAsync([.. r, "rm", id]);
        await RunAsync([.. r, "rmp", podId]);
        var newPod = await WritePodAsync(dir, "restored", "uid-2");
        var newPodId = await s.Pods.RunAsync(newPod);
        var restoreConfig = dir.Combine("restore.json");
        await File.WriteAllTextAsync(restoreConfig, $$"""
            {"metadata": {"name": "counter", "attempt": 1}, "image": {"image": "{{archive}}"},
             "annotations": {"io.kubernetes.container.hash": "B", "io.kubernetes.container.restartCount": "3", "only.in.request": "x"},
             "labels": {"io.kubernetes.container.name": "counter", "generation": "two"},
             "log_path": "counter.log", "linux": {} }
            """, Ct);
        var restored = await RunAsync([.. r, "create", newPodId, restoreConfig, newPod]);
        Assert.NotEqual(id, restored);
        await RunAsync([.. r, "start", restored]);
        Assert.Contains($"Parsing config file {dir.Combine("root", "containers", restored, "criu.conf")}", await File.ReadAllTextAsync(dir.Combine("root", "containers", restored, "bundle", "restore.log"), Ct), StringComparison.Ordinal);

        // The process continued from its memory: the new log starts with the old lines and goes on from the last count.
        var newLog = await WaitForCountAsync(dir.Combine("logs-restored", "counter.log"), lastBefore + 3);
        Assert.StartsWith(archivedLog[..Math.Min(200, archivedLog.Length)], newLog, StringComparison.Ordinal);
        var counts = CountLine().Matches(newLog).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        var firstAfter = CountLine().Match(newLog[archivedLog.Length..]) is { Success: true } m1 ? int.Parse(m1.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) : -1;
        Assert.InRange(firstAfter, lastBefore + 1, lastBefore + 2);
        Assert.True(counts.Zip(counts.Skip(1)).All(p => p.Second > p.First), "the restored log repeats or goes back in its counts (the log copy must end where the checkpoint froze)");
        Assert.True(LastCount(newLog) > lastBefore + 2, crestd.Log);

        // Rootfs changes survived.
        Assert.Equal(0, (await Binaries.RunCrestAsync([.. r, "exec", "-s", restored, "/bin/sh", "-c", "test -f /root/testfile"])).ExitCode);
        Assert.NotEqual(0, (await Binaries.RunCrestAsync([.. r, "exec", "-s", restored, "/bin/sh", "-c", "test -e /etc/motd"])).ExitCode);

        // Metadata: the request's labels, the checkpoint's annotations adapted, cdi.k8s.io/* dropped.
        var status = await InspectAsync(r, restored);
        var st = status.GetProperty("status");
        Assert.Equal("CONTAINER_RUNNING", st.GetProperty("state").GetString());
        var annotations = st.GetProperty("annotations");
        Assert.Equal("true", annotations.GetProperty("restored").GetString());
        Assert.Equal(archive, annotations.GetProperty("checkpointImage").GetString());
        Assert.True(DateTimeOffset.TryParse(annotations.GetProperty("checkpointedAt").GetString(), System.Globalization.CultureInfo.InvariantCulture, out _));
        Assert.Equal("B", annotations.GetProperty("io.kubernetes.container.hash").GetString());
        Assert.Equal("3", annotations.GetProperty("io.kubernetes.container.restartCount").GetString());
        Assert.Equal("true", annotations.GetProperty("safe.annotation").GetString());
        Assert.False(annotations.TryGetProperty("cdi.k8s.io/device", out _));
        Assert.False(annotations.TryGetProperty("only.in.request", out _));
        Assert.Equal("two", st.GetProperty("labels").GetProperty("generation").GetString());
        Assert.True(status.GetProperty("info").GetProperty("restored").GetBoolean());

        // It lives in the new pod's network namespace: eth0 has the new pod's IP.
        using (var podStatus = JsonDocument.Parse(await RunAsync([.. r, "inspectp", newPodId])))
        {
            var ip = podStatus.RootElement.GetProperty("status").GetProperty("network").GetProperty("ip").GetString()!;
            var addr = await RunAsync([.. r, "exec", "-s", restored, "/bin/busybox", "ip", "-4", "addr", "show", "eth0"]);
            Assert.Contains(ip + "/", addr, StringComparison.Ordinal);
        }

        // A restored container can be checkpointed again.
        var again = await Binaries.RunCrestAsync([.. r, "checkpoint", "--export", dir.Combine("cp2.tar"), restored]);
        Assert.True(again.ExitCode == 0, again.Stderr);
    }

    [Fact]
    public async Task A_checkpoint_image_built_without_buildah_restores_and_restores_again_after_the_container_dies()
    {
        RequireCheckpointTools();
        Requires.Binary("docker-registry");
        await using var registry = await LocalRegistry.StartAsync();
        var checkpointImage = $"{registry.Host}/e2e/counter-checkpoint:v1";
        using var dir = new TempDir("crest-e2e-cri");
        await using var s = await StartAsync(dir);
        var crestd = s.Crestd;
        var r = s.R;
        var (podId, id) = await RunCounterAsync(s);
        await CountPassesAsync(dir.Combine("logs-counter", "counter.log"), 3);
        var built = await Binaries.RunCrestAsync([.. r, "checkpoint", "--image", checkpointImage, "--push", id]);
        Assert.True(built.ExitCode == 0, built.Stderr + crestd.Log);
        var lastBefore = LastCount(await File.ReadAllTextAsync(dir.Combine("logs-counter", "counter.log"), Ct));
        await RunAsync([.. r, "rmp", podId]);

        var inspecti = await RunAsync([.. r, "inspecti", checkpointImage]);
        Assert.Contains("org.criu.checkpoint.container.name", inspecti, StringComparison.Ordinal);

        // The pushed image, inspected from the registry with no daemon: what a restore would put back.
        var remote = await Binaries.RunCrestAsync(["checkpoint", "inspect", checkpointImage]);
        Assert.True(remote.ExitCode == 0, remote.Stderr);
        Assert.Matches(@"\n\d+\s+/bin/busybox sh -c i=0; while true; do", remote.Stdout);
        Assert.Contains("(localhost/e2e/busybox:v1)", remote.Stdout, StringComparison.Ordinal);
        var missing = await Binaries.RunCrestAsync(["checkpoint", "inspect", $"{registry.Host}/e2e/nothing:v1"]);
        Assert.NotEqual(0, missing.ExitCode);

        var newPod = await WritePodAsync(dir, "again", "uid-3");
        var newPodId = await s.Pods.RunAsync(newPod);
        for (var attempt = 1; attempt <= 2; attempt++)
        {
            var config = dir.Combine($"restore-{attempt}.json");
            await File.WriteAllTextAsync(config, $$"""
                {"metadata": {"name": "counter", "attempt": {{attempt}}}, "image": {"image": "{{checkpointImage}}"},
                 "log_path": "counter-{{attempt}}.log", "linux": {} }
                """, Ct);
            var restored = await RunAsync([.. r, "create", newPodId, config, newPod]);
            await RunAsync([.. r, "start", restored]);
            var log = await WaitForCountAsync(dir.Combine("logs-again", $"counter-{attempt}.log"), lastBefore);
            Assert.True(LastCount(log) > lastBefore, $"attempt {attempt}: the counter did not continue from {lastBefore}:\n{log[^Math.Min(300, log.Length)..]}");
            var status = (await InspectAsync(r, restored)).GetProperty("status");
            Assert.Equal(checkpointImage, status.GetProperty("annotations").GetProperty("checkpointImage").GetString());
            // The kubelet's restart: the restored process dies, a new CreateContainer restores from the same image.
            var pid = (await InspectAsync(r, restored)).GetProperty("info").GetProperty("pid").GetInt32();
            Process.GetProcessById(pid).Kill();
            await WaitForStateAsync(r, restored, "CONTAINER_EXITED");
        }
    }

    [Fact]
    public async Task Checkpoint_failures_are_clear_leave_no_archive_and_the_container_running()
    {
        RequireCheckpointTools();
        using var dir = new TempDir("crest-e2e-crf");
        await using var s = await StartAsync(dir, extraConfig: "");
        var crestd = s.Crestd;
        var r = s.R;
        var podId = await s.Pods.RunAsync(s.PodConfig);
        var id = await RunAsync([.. r, "create", podId, s.CounterConfig, s.PodConfig]);

        // Not running yet.
        var created = await Binaries.RunCrestAsync([.. r, "checkpoint", "--export", dir.Combine("created.tar"), id]);
        Assert.Equal(1, created.ExitCode);
        Assert.Contains("only CONTAINER_RUNNING containers can be checkpointed", created.Stderr, StringComparison.Ordinal);
        Assert.False(File.Exists(dir.Combine("created.tar")));
        await RunAsync([.. r, "start", id]);

        var unknown = await Binaries.RunCrestAsync([.. r, "checkpoint", "--export", dir.Combine("x.tar"), "0000000000000000"]);
        Assert.Equal(1, unknown.ExitCode);
        Assert.Contains("does not exist", unknown.Stderr, StringComparison.Ordinal);

        var missingDir = await Binaries.RunCrestAsync([.. r, "checkpoint", "--export", dir.Combine("no", "such", "cp.tar"), id]);
        Assert.Equal(1, missingDir.ExitCode);
        Assert.Contains("does not exist", missingDir.Stderr, StringComparison.Ordinal);

        var victim = dir.Combine("victim");
        await File.WriteAllTextAsync(victim, "precious", Ct);
        File.CreateSymbolicLink(dir.Combine("link.tar"), victim);
        var link = await Binaries.RunCrestAsync([.. r, "checkpoint", "--export", dir.Combine("link.tar"), id]);
        Assert.Equal(1, link.ExitCode);
        Assert.Contains("symbolic link", link.Stderr, StringComparison.Ordinal);
        Assert.Equal("precious", await File.ReadAllTextAsync(victim, Ct));

        // A full filesystem: a clear error, nothing left behind, the container still running.
        var small = dir.CreateDirectory("small");
        Assert.Equal(0, (await Tool("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", small)).ExitCode);
        try
        {
            var full = await Binaries.RunCrestAsync([.. r, "checkpoint", "--export", Path.Combine(small, "cp.tar"), id]);
            Assert.Equal(1, full.ExitCode);
            Assert.Contains("No space left on device", full.Stderr, StringComparison.Ordinal);
            Assert.Empty(Directory.EnumerateFileSystemEntries(small));
        }
        finally
        {
            await Tool("umount", small);
        }

        var state = (await InspectAsync(r, id)).GetProperty("status").GetProperty("state").GetString();
        Assert.Equal("CONTAINER_RUNNING", state);
        var logFile = dir.Combine("logs-counter", "counter.log");
        await CountPassesAsync(logFile, LastCount(await File.ReadAllTextAsync(logFile, Ct)), "the container is frozen or stopped after failed checkpoints");

        // Restore is off by default: a checkpoint given to CreateContainer fails fast and never becomes a normal create.
        var good = dir.Combine("good.tar");
        await RunAsync([.. r, "checkpoint", "--export", good, id]);
        var restoreConfig = dir.Combine("restore.json");
        await File.WriteAllTextAsync(restoreConfig, $$"""{"metadata": {"name": "restored"}, "image": {"image": "{{good}}"}, "linux": {} }""", Ct);
        var disabled = await Binaries.RunCrestAsync([.. r, "create", podId, restoreConfig, s.PodConfig]);
        Assert.Equal(1, disabled.ExitCode);
        Assert.Contains("restore via CreateContainer is disabled by configuration", disabled.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("restored", await RunAsync([.. r, "ps", "-a"]), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_bad_checkpoint_fails_create_or_start_cleanly_and_the_container_can_be_removed()
    {
        RequireCheckpointTools();
        using var dir = new TempDir("crest-e2e-crb");
        await using var s = await StartAsync(dir);
        var crestd = s.Crestd;
        var r = s.R;
        var (podId, id) = await RunCounterAsync(s);
        await CountPassesAsync(dir.Combine("logs-counter", "counter.log"), 3);
        var good = dir.Combine("good.tar");
        await RunAsync([.. r, "checkpoint", "--export", good, id]);

        // Not an archive at all.
        var junk = dir.Combine("junk.tar");
        await File.WriteAllBytesAsync(junk, [.. Enumerable.Range(0, 4096).Select(i => (byte)(i * 7))], Ct);
        async Task<(int ExitCode, string Stdout, string Stderr)> CreateFrom(string image, string name)
        {
            var config = dir.Combine(name + ".json");
            await File.WriteAllTextAsync(config, $$"""{"metadata": {"name": "{{name}}"}, "image": {"image": "{{image}}"}, "log_path": "{{name}}.log", "linux": {} }""", Ct);
            return await Binaries.RunCrestAsync([.. r, "create", podId, config, s.PodConfig]);
        }

        var bad = await CreateFrom(junk, "junk");
        Assert.Equal(1, bad.ExitCode);
        Assert.Contains(junk, bad.Stderr, StringComparison.Ordinal);

        // An archive without spec.dump.
        var noSpec = dir.Combine("nospec.tar");
        await using (var input = File.OpenRead(good))
        await using (var output = File.Create(noSpec))
        {
            using var reader = new TarReader(input);
            await using var writer = new TarWriter(output, TarEntryFormat.Pax);
            while (await reader.GetNextEntryAsync(copyData: true, Ct) is { } e)
            {
                if (e.Name != "spec.dump")
                {
                    await writer.WriteEntryAsync(e, Ct);
                }
            }
        }

        var missing = await CreateFrom(noSpec, "nospec");
        Assert.Equal(1, missing.ExitCode);
        Assert.Contains("failed to read \"spec.dump\"", missing.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("junk", await RunAsync([.. r, "ps", "-a"]), StringComparison.Ordinal);
        Assert.DoesNotContain("nospec", await RunAsync([.. r, "ps", "-a"]), StringComparison.Ordinal);
        Assert.Empty(Directory.Exists(dir.Combine("root", "restores")) ? Directory.EnumerateFileSystemEntries(dir.Combine("root", "restores")) : []);

        // Corrupt memory pages: create works, start fails with StartError and CRIU's words, remove works.
        var created = await CreateFrom(good, "corrupt");
        Assert.True(created.ExitCode == 0, created.Stderr);
        var restoredId = created.Stdout.Trim();
        var restoreDir = dir.Combine("root", "containers", restoredId, "restore", "checkpoint");
        foreach (var pages in Directory.EnumerateFiles(restoreDir, "pages-*.img"))
        {
            await File.WriteAllBytesAsync(pages, [1, 2, 3], Ct);
        }

        foreach (var core in Directory.EnumerateFiles(restoreDir, "core-*.img"))
        {
            await File.WriteAllBytesAsync(core, [1, 2, 3], Ct);
        }

        var start = await Binaries.RunCrestAsync([.. r, "start", restoredId]);
        Assert.Equal(1, start.ExitCode);
        var status = (await InspectAsync(r, restoredId)).GetProperty("status");
        Assert.Equal("CONTAINER_EXITED", status.GetProperty("state").GetString());
        Assert.Equal(128, status.GetProperty("exitCode").GetInt32());
        Assert.Equal("StartError", status.GetProperty("reason").GetString());
        Assert.Contains("restore.log", status.GetProperty("message").GetString(), StringComparison.Ordinal);
        Assert.False(Directory.Exists(restoreDir));
        await RunAsync([.. r, "rm", restoredId]);
    }

    [Fact]
    public async Task A_criu_failure_is_reported_with_its_words_and_the_container_keeps_running_unpaused()
    {
        RequireCheckpointTools();
        using var dir = new TempDir("crest-e2e-crc");
        // runc finds criu on PATH; this one fails the dump. crestd's own CRIU probe uses the real binary by path.
        var fake = dir.CreateDirectory("fakebin");
        await File.WriteAllTextAsync(Path.Combine(fake, "criu"), "#!/bin/sh\necho 'Error (criu/cr-dump.c:2099): fake CRIU refuses to dump' >&2\nexit 1\n", Ct);
        File.SetUnixFileMode(Path.Combine(fake, "criu"), (UnixFileMode)0x1ED);
        var realCriu = Requires.Binary("criu");
        await using var s = await StartAsync(dir, $"[checkpoint]\ncriu_path = \"{realCriu}\"\n", environment: new Dictionary<string, string>
        {
            ["PATH"] = fake + ":" + Environment.GetEnvironmentVariable("PATH"),
        });
        var crestd = s.Crestd;
        var r = s.R;
        var (_, id) = await RunCounterAsync(s);
        var logFile = dir.Combine("logs-counter", "counter.log");
        await CountPassesAsync(logFile, 3);

        var failed = await Binaries.RunCrestAsync([.. r, "checkpoint", "--export", dir.Combine("cp.tar"), id]);

        Assert.Equal(1, failed.ExitCode);
        Assert.Contains("checkpoint failed", failed.Stderr, StringComparison.Ordinal);
        Assert.Contains("criu", failed.Stderr, StringComparison.OrdinalIgnoreCase);
        Assert.False(File.Exists(dir.Combine("cp.tar")));
        Assert.Empty(Directory.EnumerateFiles(dir.Path, ".cp.tar*"));
        Assert.Empty(Directory.EnumerateDirectories(dir.Combine("root", "containers", id), "checkpoint-work*"));
        Assert.Equal("CONTAINER_RUNNING", (await InspectAsync(r, id)).GetProperty("status").GetProperty("state").GetString());
        await CountPassesAsync(logFile, LastCount(await File.ReadAllTextAsync(logFile, Ct)), "the container is still frozen after a failed checkpoint");
    }

    [Fact]
    public async Task A_compressed_archive_restores_like_a_plain_one()
    {
        RequireCheckpointTools();
        using var dir = new TempDir("crest-e2e-crz");
        await using var s = await StartAsync(dir);
        var crestd = s.Crestd;
        var r = s.R;
        var (podId, id) = await RunCounterAsync(s);
        await CountPassesAsync(dir.Combine("logs-counter", "counter.log"), 3);
        var archive = dir.Combine("cp.tar.zst");
        await RunAsync([.. r, "checkpoint", "--compress", "zstd", "--export", archive, id]);
        var head = new byte[4];
        await using (var f = File.OpenRead(archive))
        {
            await f.ReadExactlyAsync(head, Ct);
        }

        Assert.Equal(new byte[] { 0x28, 0xb5, 0x2f, 0xfd }, head);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(archive));
        var lastBefore = LastCount(await File.ReadAllTextAsync(dir.Combine("logs-counter", "counter.log"), Ct));
        await RunAsync([.. r, "rm", id]);
        var config = dir.Combine("restore.json");
        await File.WriteAllTextAsync(config, $$"""{"metadata": {"name": "counter", "attempt": 1}, "image": {"image": "{{archive}}"}, "log_path": "restored.log", "linux": {} }""", Ct);
        var restored = await RunAsync([.. r, "create", podId, config, s.PodConfig]);
        await RunAsync([.. r, "start", restored]);
        Assert.True(LastCount(await WaitForCountAsync(dir.Combine("logs-counter", "restored.log"), lastBefore)) > lastBefore);
    }

    /// <summary>Whether CRIU's files.img in a checkpoint archive names <paramref name="path"/>: a file the dumped processes held open.</summary>
    private static async Task<bool> HoldsOpenFileAsync(string archive, string path)
    {
        await using var file = File.OpenRead(archive);
        using var tar = new System.Formats.Tar.TarReader(file);
        while (await tar.GetNextEntryAsync(copyData: false, Ct) is { } entry)
        {
            if (entry.Name.TrimStart('.', '/') == "checkpoint/files.img" && entry.DataStream is { } data)
            {
                using var bytes = new MemoryStream();
                await data.CopyToAsync(bytes, Ct);
                return bytes.ToArray().AsSpan().IndexOf(System.Text.Encoding.ASCII.GetBytes(path)) >= 0;
            }
        }

        return false;
    }

    [Fact]
    public async Task A_restore_by_image_id_into_another_cgroup_parent_needs_the_bind_mounts_and_recreates_missing_sources()
    {
        RequireCheckpointTools();
        using var dir = new TempDir("crest-e2e-crm");
        await using var s = await StartAsync(dir);
        var crestd = s.Crestd;
        var r = s.R;
        var dataA = dir.CreateDirectory("data-a");
        var extraA = dir.Combine("extra-a");
        await File.WriteAllTextAsync(extraA, "extra\n", Ct);
        var counter = await CounterWorkload.WriteConfigAsync(dir, "localhost/e2e/busybox:v1",
            $$"""
            "mounts": [{"container_path": "/data", "host_path": "{{dataA}}"}, {"container_path": "/etc/extra", "host_path": "{{extraA}}", "readonly": true}],
            """,
            CounterWorkload.ScriptWith("echo $i > /data/last; "), "counter-mounts.json");
        var podId = await s.Pods.RunAsync(s.PodConfig);
        var id = await RunAsync([.. r, "create", podId, counter, s.PodConfig]);
        await RunAsync([.. r, "start", id]);
        await CountPassesAsync(dir.Combine("logs-counter", "counter.log"), 3);
        var archive = dir.Combine("cp.tar");
        // The counter opens /data/last for a moment every 0.1 s. A dump that caught it open cannot restore into the
        // empty new /data below (CRIU must reopen the file, and rightly fails): such a checkpoint is taken again.
        for (var attempt = 1; ; attempt++)
        {
            await RunAsync([.. r, "checkpoint", "--export", archive, id]);
            if (!await HoldsOpenFileAsync(archive, "data/last") || attempt == 5)
            {
                break;
            }
        }

        await RunAsync([.. r, "checkpoint-image", archive, "localhost/e2e/mounts-checkpoint:v1"]);
        await RunAsync([.. r, "rmp", podId]);
        string imageId;
        using (var image = JsonDocument.Parse(await RunAsync([.. r, "inspecti", "localhost/e2e/mounts-checkpoint:v1"])))
        {
            imageId = image.RootElement.GetProperty("status").GetProperty("id").GetString()!;
        }

        var pod = dir.Combine("pod-other.json");
        await File.WriteAllTextAsync(pod, $$"""
            {"metadata": {"name": "other", "uid": "uid-other", "namespace": "e2e", "attempt": 1},
             "hostname": "other", "log_directory": "{{dir.CreateDirectory("logs-other")}}", "linux": {"cgroup_parent": "crest_e2e_different_789"} }
            """, Ct);
        var newPodId = await s.Pods.RunAsync(pod);

        // Without the checkpoint's bind mounts the restore is refused at CreateContainer, naming them.
        var bare = dir.Combine("restore-bare.json");
        await File.WriteAllTextAsync(bare, $$"""{"metadata": {"name": "counter"}, "image": {"image": "{{imageId}}", "user_specified_image": "localhost/e2e/mounts-checkpoint:v1"}, "linux": {} }""", Ct);
        var refused = await Binaries.RunCrestAsync([.. r, "create", newPodId, bare, pod]);
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("expects following bind mounts defined", refused.Stderr, StringComparison.Ordinal);
        Assert.Contains("/data", refused.Stderr, StringComparison.Ordinal);
        Assert.Contains("/etc/extra", refused.Stderr, StringComparison.Ordinal);
        Assert.Equal("", (await RunAsync([.. r, "ps", "-a", "-q"])).Trim());

        // With them, by image ID as the kubelet sends it, new sources that do not exist yet, and no log path.
        var dataB = dir.Combine("data-b");
        var extraB = dir.Combine("extra-b");
        var full = dir.Combine("restore-mounts.json");
        await File.WriteAllTextAsync(full, $$"""
            {"metadata": {"name": "counter"}, "image": {"image": "{{imageId}}", "user_specified_image": "localhost/e2e/mounts-checkpoint:v1"},
             "mounts": [{"container_path": "/data", "host_path": "{{dataB}}"}, {"container_path": "/etc/extra", "host_path": "{{extraB}}", "readonly": true}],
             "linux": {} }
            """, Ct);
        var restored = await RunAsync([.. r, "create", newPodId, full, pod]);
        await RunAsync([.. r, "start", restored]);
        await Eventually.LastAsync(() => Task.FromResult(File.Exists(Path.Combine(dataB, "last"))), written => written, ct: Ct);
        Assert.True(Directory.Exists(dataB), "the missing directory source was not recreated");
        Assert.True(File.Exists(extraB), "the missing file source was not recreated as a file");
        Assert.True(File.Exists(Path.Combine(dataB, "last")), "the restored process does not write into the new /data source");
        var status = await InspectAsync(r, restored);
        Assert.Equal("CONTAINER_RUNNING", status.GetProperty("status").GetProperty("state").GetString());
        Assert.Equal("localhost/e2e/mounts-checkpoint:v1", status.GetProperty("status").GetProperty("annotations").GetProperty("checkpointImage").GetString());
        var pid = status.GetProperty("info").GetProperty("pid").GetInt32();
        Assert.Contains("crest_e2e_different_789", await File.ReadAllTextAsync($"/proc/{pid}/cgroup", Ct), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_restore_never_grants_more_than_the_request_even_from_edited_criu_images()
    {
        RequireCheckpointTools();
        using var dir = new TempDir("crest-e2e-crp");
        await using var s = await StartAsync(dir);
        var crestd = s.Crestd;
        var r = s.R;
        var (podId, id) = await RunCounterAsync(s);
        await CountPassesAsync(dir.Combine("logs-counter", "counter.log"), 3);
        var archive = dir.Combine("cp.tar");
        await RunAsync([.. r, "checkpoint", "--export", archive, id]);
        await RunAsync([.. r, "rm", id]);

        async Task<(int ExitCode, string Stdout, string Stderr)> Restore(string name, string image, string linux)
        {
            var config = dir.Combine(name + ".json");
            await File.WriteAllTextAsync(config, $$"""{"metadata": {"name": "{{name}}"}, "image": {"image": "{{image}}"}, "log_path": "{{name}}.log", "linux": {{linux}} }""", Ct);
            return await Binaries.RunCrestAsync([.. r, "create", podId, config, s.PodConfig]);
        }

        // The checkpointed process runs as root with the default capabilities and no seccomp filter.
        var nonRoot = await Restore("nonroot", archive, """{"security_context": {"run_as_user": {"value": 1000}}}""");
        var noCaps = await Restore("nocaps", archive, """{"security_context": {"capabilities": {"drop_capabilities": ["ALL"]}}}""");
        var seccomp = await Restore("seccomp", archive, """{"security_context": {"seccomp": {"profile_type": "RuntimeDefault"}}}""");
        Assert.Equal(1, nonRoot.ExitCode);
        Assert.Contains("PermissionDenied", nonRoot.Stderr, StringComparison.Ordinal);
        Assert.Contains("uid (real/effective/saved/fs) is 0/0/0/0 in the checkpoint, but the request allows run_as_user 1000", nonRoot.Stderr, StringComparison.Ordinal);
        Assert.Equal(1, noCaps.ExitCode);
        Assert.Contains("effective capabilities is CAP_CHOWN", noCaps.Stderr, StringComparison.Ordinal);
        Assert.Equal(1, seccomp.ExitCode);
        Assert.Contains("seccomp mode is disabled in the checkpoint", seccomp.Stderr, StringComparison.Ordinal);

        // The same verdict offline, without a daemon: crest checkpoint inspect.
        var inspect = await Binaries.RunCrestAsync(["checkpoint", "inspect", archive]);
        Assert.True(inspect.ExitCode == 0, inspect.Stderr);
        Assert.Matches(@"\n(\d+)\s+\1\s+busybox\s+0/0/0/0\s+0/0/0/0\s+disabled\s+CAP_CHOWN,", inspect.Stdout);
        Assert.Matches(@"\n\d+\s+/bin/busybox sh -c i=0; while true; do", inspect.Stdout);
        Assert.Matches(@"\n\d+\s+pid:\d+ net:\d+ ipc:\d+ uts:\d+ mnt:\d+", inspect.Stdout);
        Assert.Matches(@"\n/dev\s+tmpfs\s+tmpfs\s+CRIU", inspect.Stdout);
        var verdict = await Binaries.RunCrestAsync(["checkpoint", "inspect", "--config", dir.Combine("nonroot.json"), archive]);
        Assert.Equal(1, verdict.ExitCode);
        Assert.Contains("Crest would REFUSE this restore", verdict.Stdout, StringComparison.Ordinal);
        Assert.Contains("run_as_user 1000", verdict.Stdout, StringComparison.Ordinal);

        // Hostile checkpoints: images edited after the dump.
        async Task<string> EditImages(string name, Func<string, byte[], byte[]> edit, Action<TarWriter>? more = null)
        {
            var edited = dir.Combine(name + ".tar");
            await using var input = File.OpenRead(archive);
            await using var output = File.Create(edited);
            using var reader = new TarReader(input);
            await using var writer = new TarWriter(output, TarEntryFormat.Pax);
            while (await reader.GetNextEntryAsync(copyData: true, Ct) is { } e)
            {
                if (e.DataStream is not null)
                {
                    using var buffer = new MemoryStream();
                    await e.DataStream.CopyToAsync(buffer, Ct);
                    e.DataStream = new MemoryStream(edit(e.Name, buffer.ToArray()));
                }

                await writer.WriteEntryAsync(e, Ct);
            }

            more?.Invoke(writer);
            return edited;
        }

        Task<string> EditCores(string name, Action<Crest.Criu.Api.Images.core_entry> edit) =>
            EditImages(name, (entry, data) => System.Text.RegularExpressions.Regex.IsMatch(entry, @"^checkpoint/core-\d+\.img$") ? EditCore(data, edit) : data);

        var widened = await Restore("hostile", await EditCores("hostile", core =>
        {
            foreach (var set in new[] { core.ThreadCore.Creds.CapEff, core.ThreadCore.Creds.CapPrm, core.ThreadCore.Creds.CapBnd })
            {
                set[0] |= 1u << 21; // CAP_SYS_ADMIN
            }
        }), "{}");
        Assert.Equal(1, widened.ExitCode);
        Assert.Contains("CAP_SYS_ADMIN beyond the grant", widened.Stderr, StringComparison.Ordinal);
        var foreign = await Restore("foreign", await EditCores("foreign", core => core.Mtype = Crest.Criu.Api.Images.core_entry.Types.march.Aarch64), "{}");
        Assert.Equal(1, foreign.ExitCode);
        Assert.Contains("was made on aarch64", foreign.Stderr, StringComparison.Ordinal);

        // run_as_user without run_as_group: the group comes from the image (no /etc/passwd here: gid 0), so a
        // checkpoint claiming gid 5 is refused once the spec is built, and the half-made container is removed.
        var group = await Restore("group", await EditCores("group", core =>
        {
            var c = core.ThreadCore.Creds;
            (c.Gid, c.Egid, c.Sgid, c.Fsgid) = (5, 5, 5, 5);
        }), """{"security_context": {"run_as_user": {"value": 0}}}""");
        Assert.Equal(1, group.ExitCode);
        Assert.True(group.Stderr.Contains("gid (real/effective/saved/fs) is 5/5/5/5 in the checkpoint, but the request allows gid 0, the run_as_user's group in the image", StringComparison.Ordinal), group.Stderr);

        // A mount CRIU would make itself that the container never had: the node's disk at /mnt.
        var mounted = await Restore("mounted", await EditImages("mounted", (entry, data) =>
            System.Text.RegularExpressions.Regex.IsMatch(entry, @"^checkpoint/mountpoints-\d+\.img$")
                ? [.. data, .. Framed(new Crest.Criu.Api.Images.mnt_entry
                {
                    Fstype = (uint)Crest.Criu.Api.Images.fstype.Auto, Fsname = "ext4", MntId = 9999, RootDev = 0xfd00, ParentMntId = 1,
                    Flags = 0, Root = "/", Mountpoint = "/mnt", Source = "/dev/vda", Options = "",
                })]
                : data), "{}");
        Assert.Equal(1, mounted.ExitCode);
        Assert.True(mounted.Stderr.Contains("the mount at /mnt is ext4 from /dev/vda in the checkpoint", StringComparison.Ordinal), mounted.Stderr);

        // A block device node in the container's /dev contents, and a user namespace of its own.
        var device = await Restore("device", await EditImages("device", (entry, data) =>
        {
            if (!entry.StartsWith("checkpoint/tmpfs-dev-", StringComparison.Ordinal) || !TarNames(data).Contains("./null"))
            {
                return data;
            }

            return AddToGzipTar(data, new PaxTarEntry(TarEntryType.BlockDevice, "./sda") { DeviceMajor = 8, DeviceMinor = 0, Mode = (UnixFileMode)0x1B6 });
        }), "{}");
        Assert.Equal(1, device.ExitCode);
        Assert.True(device.Stderr.Contains("device node /dev/sda in tmpfs-dev-", StringComparison.Ordinal), device.Stderr);
        Assert.True(device.Stderr.Contains("is block device 8:0 in the checkpoint", StringComparison.Ordinal), device.Stderr);
        var userns = await Restore("userns", await EditImages("userns", (_, data) => data, more: t =>
            t.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, "checkpoint/userns-99.img") { DataStream = new MemoryStream([0x19, 0x43, 0x56, 0x54]) })), "{}");
        Assert.Equal(1, userns.ExitCode);
        Assert.True(userns.Stderr.Contains("a user namespace of its own (userns-99.img)", StringComparison.Ordinal), userns.Stderr);

        // The mounts check, relaxed by name for a trusted source, would let the mount through; inspect shows it.
        var shown = await Binaries.RunCrestAsync(["checkpoint", "inspect", "-o", "json", dir.Combine("mounted.tar")]);
        Assert.True(shown.ExitCode == 0, shown.Stderr);
        Assert.Contains("\"mountPoint\": \"/mnt\"", shown.Stdout, StringComparison.Ordinal);

        // Nothing was created or left behind; the unmodified checkpoint with the default request still restores.
        Assert.Equal("", (await RunAsync([.. r, "ps", "-a", "-q"])).Trim());
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Combine("root", "restores")));
        var good = await Restore("good", archive, "{}");
        Assert.True(good.ExitCode == 0, good.Stderr);
        await RunAsync([.. r, "start", good.Stdout.Trim()]);
    }

    /// <summary>One CRIU image entry: a 32-bit length, then the message.</summary>
    private static byte[] Framed(Google.Protobuf.IMessage message)
    {
        var payload = Google.Protobuf.MessageExtensions.ToByteArray(message);
        var result = new byte[4 + payload.Length];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(result, payload.Length);
        payload.CopyTo(result, 4);
        return result;
    }

    private static HashSet<string> TarNames(byte[] gzipTar)
    {
        using var reader = new TarReader(new System.IO.Compression.GZipStream(new MemoryStream(gzipTar), System.IO.Compression.CompressionMode.Decompress));
        var names = new HashSet<string>(StringComparer.Ordinal);
        while (reader.GetNextEntry() is { } e)
        {
            names.Add(e.Name);
        }

        return names;
    }

    private static byte[] AddToGzipTar(byte[] gzipTar, TarEntry extra)
    {
        using var output = new MemoryStream();
        using (var gzip = new System.IO.Compression.GZipStream(output, System.IO.Compression.CompressionLevel.Fastest, leaveOpen: true))
        using (var writer = new TarWriter(gzip, TarEntryFormat.Pax))
        using (var reader = new TarReader(new System.IO.Compression.GZipStream(new MemoryStream(gzipTar), System.IO.Compression.CompressionMode.Decompress)))
        {
            while (reader.GetNextEntry(copyData: true) is { } e)
            {
                writer.WriteEntry(e);
            }

            writer.WriteEntry(extra);
        }

        return output.ToArray();
    }

    /// <summary>Rewrites a CRIU core image (magics, then one length-prefixed core_entry) after <paramref name="edit"/>.</summary>
    private static byte[] EditCore(byte[] image, Action<Crest.Criu.Api.Images.core_entry> edit)
    {
        var size = System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(image.AsSpan(8));
        var core = Crest.Criu.Api.Images.core_entry.Parser.ParseFrom(image.AsSpan(12, size));
        edit(core);
        var payload = Google.Protobuf.MessageExtensions.ToByteArray(core);
        var result = new byte[12 + payload.Length];
        image.AsSpan(0, 8).CopyTo(result);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(result.AsSpan(8), payload.Length);
        payload.CopyTo(result, 12);
        return result;
    }

    [Fact]
    public async Task An_archive_in_cri_o_form_restores_with_its_json_annotations_plain_rootfs_diff_and_deleted_files()
    {
        RequireCheckpointTools();
        using var dir = new TempDir("crest-e2e-crio");
        await using var s = await StartAsync(dir);
        var crestd = s.Crestd;
        var r = s.R;
        var (podId, id) = await RunCounterAsync(s);
        await CountPassesAsync(dir.Combine("logs-counter", "counter.log"), 3);
        await RunAsync([.. r, "exec", "-s", id, "/bin/sh", "-c", "touch /root/testfile && rm /etc/motd"]);
        var archive = dir.Combine("cp.tar");
        await RunAsync([.. r, "checkpoint", "--export", archive, id]);
        await RunAsync([.. r, "rmp", podId]);
        string imageId;
        using (var image = JsonDocument.Parse(await RunAsync([.. r, "inspecti", "localhost/e2e/busybox:v1"])))
        {
            imageId = image.RootElement.GetProperty("status").GetProperty("id").GetString()!;
        }

        // Rewrite it the way CRI-O writes archives: no status.dump; annotations, labels and metadata as JSON strings
        // in spec.dump; io.container.manager=cri-o; the log under io.kubernetes.cri-o.LogPath; rootfsImageRef a bare
        // 64-hex image ID; a plain rootfs-diff.tar with no whiteouts plus deleted.files.
        var crio = dir.Combine("crio.tar");
        var lastBefore = 0;
        await using (var input = File.OpenRead(archive))
        await using (var output = File.Create(crio))
        {
            using var reader = new TarReader(input);
            await using var writer = new TarWriter(output, TarEntryFormat.Pax);
            while (await reader.GetNextEntryAsync(copyData: true, Ct) is { } e)
            {
                byte[]? data = null;
                if (e.DataStream is not null)
                {
                    using var buffer = new MemoryStream();
                    await e.DataStream.CopyToAsync(buffer, Ct);
                    data = buffer.ToArray();
                }

                switch (e.Name)
                {
                    case "status.dump":
                        continue;
                    case "spec.dump":
                    {
                        var spec = System.Text.Json.Nodes.JsonNode.Parse(data)!;
                        var crioAnnotations = new System.Text.Json.Nodes.JsonObject
                        {
                            ["io.container.manager"] = "cri-o",
                            ["io.kubernetes.cri-o.Annotations"] = """{"io.kubernetes.container.hash":"A","from.crio":"yes","cdi.k8s.io/gpu":"x","org.criu.config":"/tmp/evil.conf"}""",
                            ["io.kubernetes.cri-o.Labels"] = """{"io.kubernetes.container.name":"counter"}""",
                            ["io.kubernetes.cri-o.Metadata"] = """{"name":"counter","attempt":0}""",
                        };
                        spec["annotations"] = crioAnnotations;
                        data = System.Text.Encoding.UTF8.GetBytes(spec.ToJsonString());
                        break;
                    }

                    case "config.dump":
                    {
                        var config = System.Text.Json.Nodes.JsonNode.Parse(data)!;
                        config["rootfsImageRef"] = imageId[7..];
                        data = System.Text.Encoding.UTF8.GetBytes(config.ToJsonString());
                        break;
                    }

                    case "container.log":
                        lastBefore = LastCount(System.Text.Encoding.UTF8.GetString(data!));
                        e = new PaxTarEntry(TarEntryType.RegularFile, "io.kubernetes.cri-o.LogPath");
                        break;
                    case "rootfs-diff.tar":
                        data = await WithoutWhiteoutsAsync(data!);
                        break;
                    case "deleted.files":
                        data = "[\"/etc/motd\"]"u8.ToArray();
                        break;
                }

                if (data is not null)
                {
                    var copy = new PaxTarEntry(TarEntryType.RegularFile, e.Name) { DataStream = new MemoryStream(data), Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite };
                    await writer.WriteEntryAsync(copy, Ct);
                }
                else
                {
                    await writer.WriteEntryAsync(e, Ct);
                }
            }
        }

        var newPod = await WritePodAsync(dir, "crio", "uid-crio");
        var newPodId = await s.Pods.RunAsync(newPod);
        var config2 = dir.Combine("restore-crio.json");
        await File.WriteAllTextAsync(config2, $$"""{"metadata": {"name": "counter"}, "image": {"image": "{{crio}}"}, "annotations": {"io.kubernetes.container.hash": "B"}, "log_path": "counter.log", "linux": {} }""", Ct);
        var restored = await RunAsync([.. r, "create", newPodId, config2, newPod]);
        await RunAsync([.. r, "start", restored]);
        var log = await WaitForCountAsync(dir.Combine("logs-crio", "counter.log"), lastBefore + 2);

        Assert.True(LastCount(log) > lastBefore + 2, log[^Math.Min(400, log.Length)..]);
        Assert.Contains("stdout F count 1\n", log, StringComparison.Ordinal);
        Assert.Equal(0, (await Binaries.RunCrestAsync([.. r, "exec", "-s", restored, "/bin/sh", "-c", "test -f /root/testfile"])).ExitCode);
        Assert.NotEqual(0, (await Binaries.RunCrestAsync([.. r, "exec", "-s", restored, "/bin/sh", "-c", "test -e /etc/motd"])).ExitCode);
        var inspected = await InspectAsync(r, restored);
        var annotations = inspected.GetProperty("status").GetProperty("annotations");
        Assert.Equal("yes", annotations.GetProperty("from.crio").GetString());
        // The checkpoint's annotations are shown through the CRI, but the OCI runtime and CRIU see only the request's.
        var runtimeAnnotations = inspected.GetProperty("info").GetProperty("runtimeSpec").GetProperty("annotations");
        // org.criu.config names the container's own CRIU configuration, never the checkpoint's file.
        Assert.EndsWith($"/containers/{restored}/criu.conf", runtimeAnnotations.GetProperty("org.criu.config").GetString(), StringComparison.Ordinal);
        Assert.False(runtimeAnnotations.TryGetProperty("from.crio", out _));
        Assert.Equal("B", runtimeAnnotations.GetProperty("io.kubernetes.container.hash").GetString());
        Assert.Equal("B", annotations.GetProperty("io.kubernetes.container.hash").GetString());
        Assert.False(annotations.TryGetProperty("cdi.k8s.io/gpu", out _));
    }

    /// <summary>A copy of a rootfs diff tar without its .wh. entries, as CRI-O writes them (deletions go to deleted.files).</summary>
    private static async Task<byte[]> WithoutWhiteoutsAsync(byte[] tar)
    {
        using var output = new MemoryStream();
        await using (var writer = new TarWriter(output, TarEntryFormat.Pax, leaveOpen: true))
        {
            using var reader = new TarReader(new MemoryStream(tar));
            while (await reader.GetNextEntryAsync(copyData: true, Ct) is { } e)
            {
                if (!Path.GetFileName(e.Name.TrimEnd('/')).StartsWith(".wh.", StringComparison.Ordinal))
                {
                    await writer.WriteEntryAsync(e, Ct);
                }
            }
        }

        return output.ToArray();
    }

}
