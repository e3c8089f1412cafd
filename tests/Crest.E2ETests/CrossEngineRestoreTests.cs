using System.Diagnostics;
using System.Formats.Tar;
using System.Globalization;
using System.IO.Compression;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

/// <summary>
/// The archive format is shared in the other direction too: an archive containerd 2.1 writes through CRI
/// CheckpointContainer (status.dump, container.log, a gzip rootfs-diff.tar with whiteouts) is restored by Crest through
/// CreateContainer, which pulls the base image by the archive's rootfsImageRef digest, and the process continues.
/// </summary>
public partial class CrossEngineRestoreTests
{
    private const string RestoreOn = "[restore]\nvia_create = true\n";
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Crest_restores_a_containerd_archive_pulling_the_base_image_by_digest_and_the_counter_continues()
    {
        Requires.Root();
        var containerd = Requires.Containerd();
        var ctr = Requires.Binary("ctr");
        Requires.Binary("criu");
        Requires.Binary("conmon");
        Requires.Binary("runc");
        Requires.Binary("docker-registry");
        Requires.Binary("skopeo");
        var catatonit = Requires.Binary("catatonit");

        await using var registry = await LocalRegistry.StartAsync();
        using var dir = new TempDir("crest-e2e-xrestore");
        var name = $"{registry.Host}/e2e/busybox:v1";

        // The base image, pushed by an independent client (skopeo): neither engine has it before it pulls it.
        var layout = dir.CreateDirectory("busybox-layout");
        var manifestDigest = TestImages.WriteLayout(layout, [new TestLayer(LayerCompression.Gzip, t => TestImages.BusyboxRootfs(t, motdAndRoot: true))], "v1");
        await TestImages.PushAsync(layout, "v1", name);
        var repoDigest = $"{registry.Host}/e2e/busybox@{manifestDigest}";

        // 1. containerd: pull by tag, a pod and a counter, rootfs changes, a checkpoint archive.
        var archive = dir.Combine("containerd-cp.tar");
        using (var cni = new TempDir("crest-cni"))
        {
            CniFixture.WriteBridgeConflist(cni.Path);
            await using var peer = await ContainerdPeer.StartAsync(containerd, cni.Path, TimeSpan.FromSeconds(30));
            string[] c = ["-r", peer.Endpoint, "-t", "60s"];
            var import = await Tool(ctr, "-a", peer.Socket, "-n", "k8s.io", "images", "import", WritePauseArchive(dir, catatonit));
            Assert.True(import.ExitCode == 0, import.Output);
            await RunAsync([.. c, "pull", name]);

            var pod = await WritePodAsync(dir, "counter", "uid-ctrd");
            var counter = await CounterWorkload.WriteConfigAsync(dir, name, CounterWorkload.KubeletMetadata);
            await using var ctrdPods = new OwnedPods(c);
            var podId = await ctrdPods.RunAsync(pod);
            var id = await RunAsync([.. c, "create", podId, counter, pod]);
            await RunAsync([.. c, "start", id]);
            await CountPassesAsync(dir.Combine("logs-counter", "counter.log"), 3);
            await RunAsync([.. c, "exec", "-s", id, "/bin/sh", "-c", "mkdir -p /root; touch /root/testfile; rm /etc/motd"]);
            var checkpoint = await Binaries.RunCrestAsync([.. c, "checkpoint", "--export", archive, id]);
            Assert.True(checkpoint.ExitCode == 0, $"containerd failed to checkpoint: {checkpoint.Stderr}\n{ContainerdLog(peer)}");
        }

        // The archive is containerd's: status.dump, a log copy, a gzip rootfs diff, config.dump naming NAME@DIGEST.
        var (entries, archivedLog) = await ReadArchiveAsync(archive);
        Assert.Subset(entries.Keys.ToHashSet(), new HashSet<string> { "config.dump", "spec.dump", "status.dump", "checkpoint/inventory.img", "rootfs-diff.tar", "container.log" });
        Assert.False(entries.ContainsKey("deleted.files"), "containerd records deletions as whiteouts, not deleted.files");
        Assert.True(entries["rootfs-diff.tar"] is [0x1f, 0x8b, ..], "containerd's rootfs-diff.tar is gzip-compressed");
        var diffNames = new List<string>();
        using (var gzip = new GZipStream(new MemoryStream(entries["rootfs-diff.tar"]), CompressionMode.Decompress))
        using (var diff = new TarReader(gzip))
        {
            while (diff.GetNextEntry() is { } e)
            {
                diffNames.Add(e.Name.TrimStart('.', '/'));
            }
        }

        Assert.Contains("root/testfile", diffNames);
        Assert.Contains("etc/.wh.motd", diffNames);
        using (var config = JsonDocument.Parse(entries["config.dump"]))
        {
            Assert.Equal(repoDigest, config.RootElement.GetProperty("rootfsImageRef").GetString());
            Assert.Equal(name, config.RootElement.GetProperty("rootfsImageName").GetString());
        }

        using (var status = JsonDocument.Parse(entries["status.dump"]))
        {
            Assert.Equal(repoDigest, status.RootElement.GetProperty("image_ref").GetString());
            Assert.Equal("counter", status.RootElement.GetProperty("metadata").GetProperty("name").GetString());
        }

        using (var spec = JsonDocument.Parse(entries["spec.dump"]))
        {
            Assert.False(spec.RootElement.TryGetProperty("annotations", out var a) && a.TryGetProperty("io.container.manager", out _));
            // No namespace_options in the request: containerd's CRI default (NamespaceMode POD) joins the pod's pid
            // namespace, which runc records as CRIU's external extRootPidNS; the restore must provide one again.
            var pid = spec.RootElement.GetProperty("linux").GetProperty("namespaces").EnumerateArray().Single(n => n.GetProperty("type").GetString() == "pid");
            Assert.True(pid.TryGetProperty("path", out _), pid.ToString());
        }

        var lastBefore = LastCount(archivedLog);
        Assert.True(lastBefore > 0, "the archive's log copy holds the counter's lines");

        // 2. Crest: the base image is absent; CreateContainer pulls it by the archive's digest, then StartContainer restores.
        await using var crestd = await CrestdProcess.StartReadyAsync(dir, RestoreOn);
        string[] r = ["-r", crestd.Endpoint];
        Assert.DoesNotContain(ShortDigest(manifestDigest), await RunAsync([.. r, "images", "--digests"]), StringComparison.Ordinal);

        var newPod = await WritePodAsync(dir, "restored", "uid-crest");
        await using var pods = new OwnedPods(r);
        var newPodId = await pods.RunAsync(newPod);
        // containerd's CRI default (no namespace_options) put the process in the pod's pid namespace; a request for a
        // private one is refused before anything is pulled, and says what to ask for.
        var privatePid = dir.Combine("restore-private-pid.json");
        await File.WriteAllTextAsync(privatePid, $$"""
            {"metadata": {"name": "counter", "attempt": 1}, "image": {"image": "{{archive}}"},
             "log_path": "counter.log", "linux": {"security_context": {"namespace_options": {"pid": "CONTAINER"} } } }
            """, Ct);
        var refused = await Binaries.RunCrestAsync([.. r, "create", newPodId, privatePid, newPod]);
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("namespace_options.pid = POD", refused.Stderr, StringComparison.Ordinal);

        var restoreConfig = dir.Combine("restore.json");
        await File.WriteAllTextAsync(restoreConfig, $$"""
            {"metadata": {"name": "counter", "attempt": 1}, "image": {"image": "{{archive}}"},
             "annotations": {"io.kubernetes.container.hash": "B", "io.kubernetes.container.restartCount": "1", "only.in.request": "x"},
             "labels": {"io.kubernetes.container.name": "counter"},
             "log_path": "counter.log", "linux": {"security_context": {"namespace_options": {"pid": "POD"} } } }
            """, Ct);
        var create = await Binaries.RunCrestAsync([.. r, "create", newPodId, restoreConfig, newPod]);
        Assert.True(create.ExitCode == 0, $"Crest refused to restore the containerd archive: {create.Stderr}\n{crestd.Log}");
        var restored = create.Stdout.Trim();

        // The pull recorded only what the registry says: the digest, and no tag taken from the archive's metadata.
        var listed = await RunAsync([.. r, "images", "--digests"]);
        Assert.Contains(ShortDigest(manifestDigest), listed, StringComparison.Ordinal);
        Assert.DoesNotContain(" v1 ", listed, StringComparison.Ordinal);
        using (var images = JsonDocument.Parse(await RunAsync([.. r, "images", "-o", "json"])))
        {
            var image = Assert.Single(images.RootElement.GetProperty("images").EnumerateArray(),
                i => i.GetProperty("repoDigests").EnumerateArray().Any(d => d.GetString() == repoDigest));
            Assert.Empty(image.TryGetProperty("repoTags", out var tags) ? tags.EnumerateArray().ToList() : []);
        }

        var start = await Binaries.RunCrestAsync([.. r, "start", restored]);
        Assert.True(start.ExitCode == 0, $"Crest failed to start the restored container: {start.Stderr}\n{RestoreLog(dir, restored)}\n{crestd.Log}");
        await WaitForCountAsync(dir.Combine("logs-restored", "counter.log"), lastBefore + 2);

        var inspect = await InspectAsync(r, restored);
        var st = inspect.GetProperty("status");
        Assert.Equal("CONTAINER_RUNNING", st.GetProperty("state").GetString());
        var annotations = st.GetProperty("annotations");
        Assert.Equal("true", annotations.GetProperty("restored").GetString());
        Assert.Equal(archive, annotations.GetProperty("checkpointImage").GetString());
        Assert.Equal("B", annotations.GetProperty("io.kubernetes.container.hash").GetString());
        Assert.Equal("1", annotations.GetProperty("io.kubernetes.container.restartCount").GetString());
        Assert.Equal("true", annotations.GetProperty("safe.annotation").GetString());
        Assert.False(annotations.TryGetProperty("only.in.request", out _));
        Assert.True(inspect.GetProperty("info").GetProperty("restored").GetBoolean());

        // The process continued from its memory: the new log is the archive's copy, then the counts go on. containerd
        // copies the log after it resumed the task (reference 4, steps 5 and 8), so its copy may hold a line or two
        // past the frozen state, which the restored process prints again; it never starts over.
        var newLog = await File.ReadAllTextAsync(dir.Combine("logs-restored", "counter.log"), Ct);
        Assert.StartsWith(archivedLog, newLog, StringComparison.Ordinal);
        var after = newLog[archivedLog.Length..];
        var counts = CountLine().Matches(after).Select(x => int.Parse(x.Groups[1].Value, CultureInfo.InvariantCulture)).ToList();
        Assert.NotEmpty(counts);
        Assert.True(counts[0] >= lastBefore - 3 && counts[0] <= lastBefore + 2,
            $"the restored counter did not go on from the archive's {lastBefore}:\n{archivedLog[^Math.Min(300, archivedLog.Length)..]}\n--- restored ---\n{after[..Math.Min(300, after.Length)]}");
        Assert.True(counts.Zip(counts.Skip(1)).All(p => p.Second == p.First + 1), $"the restored counter skips or goes back:\n{after}");
        Assert.True(counts[^1] > lastBefore + 2, $"the counter did not go on from {lastBefore}:\n{after}\n{crestd.Log}");


        // containerd's gzip rootfs diff applied, its .wh. whiteout included.
        Assert.Equal(0, (await Binaries.RunCrestAsync([.. r, "exec", "-s", restored, "/bin/sh", "-c", "test -f /root/testfile"])).ExitCode);
        Assert.NotEqual(0, (await Binaries.RunCrestAsync([.. r, "exec", "-s", restored, "/bin/sh", "-c", "test -e /etc/motd"])).ExitCode);

        // It lives in the new pod's network namespace: eth0 has the Crest pod's IP.
        using (var podStatus = JsonDocument.Parse(await RunAsync([.. r, "inspectp", newPodId])))
        {
            var ip = podStatus.RootElement.GetProperty("status").GetProperty("network").GetProperty("ip").GetString()!;
            var addr = await RunAsync([.. r, "exec", "-s", restored, "/bin/busybox", "ip", "-4", "addr", "show", "eth0"]);
            Assert.Contains(ip + "/", addr, StringComparison.Ordinal);
        }
    }

    /// <summary>Every entry's bytes by name, and the log copy as text.</summary>
    private static async Task<(Dictionary<string, byte[]> Entries, string Log)> ReadArchiveAsync(string archive)
    {
        var entries = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        await using var f = File.OpenRead(archive);
        using var tar = new TarReader(f);
        while (await tar.GetNextEntryAsync(copyData: true, Ct) is { } e)
        {
            var entryName = e.Name.StartsWith("./", StringComparison.Ordinal) ? e.Name[2..] : e.Name;
            if (e.EntryType is TarEntryType.RegularFile or TarEntryType.V7RegularFile && e.DataStream is { } data)
            {
                using var copy = new MemoryStream();
                await data.CopyToAsync(copy, Ct);
                entries[entryName] = copy.ToArray();
            }
        }

        var log = entries.TryGetValue("container.log", out var bytes) ? System.Text.Encoding.UTF8.GetString(bytes) : "";
        return (entries, log);
    }

    /// <summary>The digest column of <c>crest images --digests</c>.</summary>
    private static string ShortDigest(string digest) => digest["sha256:".Length..][..13];

}
