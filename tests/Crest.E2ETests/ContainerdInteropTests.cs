using System.Diagnostics;
using System.Formats.Tar;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

/// <summary>
/// The checkpoint archive format is shared between engines: an archive Crest writes is restored by containerd 2.1,
/// driven through CRI by the crest CLI, and the restored process continues from its memory.
/// </summary>
public partial class ContainerdInteropTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public Task Containerd_restores_a_crest_archive_onto_a_base_image_pulled_by_digest_through_cri() => RestoreInContainerdAsync(pullFirst: true);

    /// <summary>containerd's own checkpoint-restore-cri-test.sh path: the base image is absent and containerd pulls config.dump's rootfsImageRef itself.</summary>
    [Fact]
    public Task Containerd_restores_a_crest_archive_pulling_the_base_image_by_its_rootfsImageRef() => RestoreInContainerdAsync(pullFirst: false);

    private static async Task RestoreInContainerdAsync(bool pullFirst)
    {
        var containerd = Requires.Containerd();
        var ctr = Requires.Binary("ctr");
        Requires.Binary("criu");
        Requires.Binary("conmon");
        Requires.Binary("runc");
        Requires.Binary("docker-registry");
        var catatonit = Requires.Binary("catatonit");

        await using var registry = await LocalRegistry.StartAsync();
        using var dir = new TempDir("crest-e2e-ctrd");
        var name = $"{registry.Host}/e2e/busybox:v1";

        // 1. Crest: an image with a repo digest (load, push, forget, pull back), a pod and a counter, a checkpoint.
        string archive, configDump, archivedLog, repoDigest;
        await using (var crestd = await CrestdProcess.StartReadyAsync(dir))
        {
            string[] r = ["-r", crestd.Endpoint];
            // A base image with a default command, as real images have: containerd builds the restored container's
            // spec from the request and the base image's config, never from spec.dump, and refuses one without a command.
            var layout = dir.CreateDirectory("busybox-layout");
            TestImages.WriteLayout(layout, [new TestLayer(LayerCompression.Gzip, t => TestImages.BusyboxRootfs(t, motdAndRoot: true))], "v1");
            var layoutArchive = dir.Combine("busybox-layout.tar");
            TestImages.TarDirectory(layout, layoutArchive);
            await RunAsync([.. r, "image", "load", layoutArchive, $"{registry.Host}/e2e/busybox"]);
            await RunAsync([.. r, "image", "push", name]);
            await RunAsync([.. r, "rmi", name]);
            await RunAsync([.. r, "pull", name]);
            using (var image = JsonDocument.Parse(await RunAsync([.. r, "inspecti", name])))
            {
                repoDigest = image.RootElement.GetProperty("status").GetProperty("repoDigests")[0].GetString()!;
            }

            Assert.Matches($@"^{Regex.Escape(registry.Host)}/e2e/busybox@sha256:[0-9a-f]{{64}}$", repoDigest);

            var pod = await WritePodAsync(dir, "counter", "uid-crest");
            var counter = await CounterWorkload.WriteConfigAsync(dir, name, CounterWorkload.KubeletMetadata);
            await using (var pods = new OwnedPods(r))
            {
                var podId = await pods.RunAsync(pod);
                var id = await RunAsync([.. r, "create", podId, counter, pod]);
                await RunAsync([.. r, "start", id]);
                await CountPassesAsync(dir.Combine("logs-counter", "counter.log"), 3);
                await RunAsync([.. r, "exec", "-s", id, "/bin/sh", "-c", "touch /root/testfile && rm /etc/motd"]);
                archive = dir.Combine("cp.tar");
                var checkpoint = await Binaries.RunCrestAsync([.. r, "checkpoint", "--export", archive, id]);
                Assert.True(checkpoint.ExitCode == 0, checkpoint.Stderr + crestd.Log);
            }

            (configDump, archivedLog) = await ReadArchiveAsync(archive);
        }

        // containerd finds the base image by config.dump's rootfsImageRef: it must be the pullable NAME@DIGEST.
        using (var config = JsonDocument.Parse(configDump))
        {
            Assert.Equal(repoDigest, config.RootElement.GetProperty("rootfsImageRef").GetString());
        }

        var lastBefore = LastCount(archivedLog);
        Assert.True(lastBefore > 0, "the archive's log copy holds the counter's lines");

        // 2. containerd: the pause image it pins, the base image (see pullFirst), then restore via CreateContainer.
        using var cni = new TempDir("crest-cni");
        CniFixture.WriteBridgeConflist(cni.Path);
        await using var peer = await ContainerdPeer.StartAsync(containerd, cni.Path, TimeSpan.FromSeconds(30));
        string[] c = ["-r", peer.Endpoint, "-t", "60s"];
        var pauseArchive = WritePauseArchive(dir, catatonit);
        var import = await Tool(ctr, "-a", peer.Socket, "-n", "k8s.io", "images", "import", pauseArchive);
        Assert.True(import.ExitCode == 0, import.Output);
        if (pullFirst)
        {
            // CRI PullImage by digest; containerd's restore then finds the base image with GetImage(rootfsImageRef).
            await RunAsync([.. c, "pull", repoDigest]);
        }

        var restoredPod = await WritePodAsync(dir, "restored", "uid-ctrd");
        await using var ctrdPods = new OwnedPods(c);
        var restoredPodId = await ctrdPods.RunAsync(restoredPod);
        var restoreConfig = dir.Combine("restore.json");
        await File.WriteAllTextAsync(restoreConfig, $$"""
            {"metadata": {"name": "counter", "attempt": 1}, "image": {"image": "{{archive}}"},
             "annotations": {"io.kubernetes.container.hash": "B", "io.kubernetes.container.restartCount": "1"},
             "labels": {"io.kubernetes.container.name": "counter"},
             "log_path": "counter.log", "linux": {} }
            """, Ct);
        var create = await Binaries.RunCrestAsync([.. c, "create", restoredPodId, restoreConfig, restoredPod]);
        if (create.ExitCode != 0)
        {
            Assert.Fail($"containerd refused to restore the Crest archive: {create.Stderr}\n{ContainerdLog(peer)}");
        }

        var restored = create.Stdout.Trim();
        var start = await Binaries.RunCrestAsync([.. c, "start", restored]);
        if (start.ExitCode != 0)
        {
            Assert.Fail($"containerd failed to start the restored container: {start.Stderr}\n{ContainerdLog(peer)}");
        }

        await WaitForCountAsync(dir.Combine("logs-restored", "counter.log"), lastBefore + 2);

        using (var inspect = JsonDocument.Parse(await RunAsync([.. c, "inspect", restored])))
        {
            var status = inspect.RootElement.GetProperty("status");
            Assert.Equal("CONTAINER_RUNNING", status.GetProperty("state").GetString());
            Assert.Equal(name, status.GetProperty("image").GetProperty("image").GetString());
            var annotations = status.GetProperty("annotations");
            Assert.Equal("true", annotations.GetProperty("restored").GetString());
            Assert.Equal("B", annotations.GetProperty("io.kubernetes.container.hash").GetString());
            Assert.Equal("true", annotations.GetProperty("safe.annotation").GetString());
        }

        // containerd has the base image under the archive's digest reference.
        using (var image = JsonDocument.Parse(await RunAsync([.. c, "inspecti", repoDigest])))
        {
            Assert.Contains(repoDigest, image.RootElement.GetProperty("status").GetProperty("repoDigests").EnumerateArray().Select(d => d.GetString()));
        }

        // containerd copied the archive's log to log_directory/log_path and appends the restored process's output.
        var newLog = await File.ReadAllTextAsync(dir.Combine("logs-restored", "counter.log"), Ct);
        Assert.StartsWith(archivedLog, newLog, StringComparison.Ordinal);
        var after = newLog[archivedLog.Length..];
        Assert.Contains($"stdout F count {lastBefore + 1}\n", after, StringComparison.Ordinal);
        Assert.DoesNotContain("stdout F count 1\n", after, StringComparison.Ordinal);
        Assert.True(LastCount(after) > lastBefore + 2, $"the counter did not go on from {lastBefore}:\n{after}");

        // The rootfs diff: containerd applies Crest's rootfs-diff.tar as a layer, .wh. markers included.
        Assert.Equal(0, (await Binaries.RunCrestAsync([.. c, "exec", "-s", restored, "/bin/sh", "-c", "test -f /root/testfile"])).ExitCode);
        Assert.NotEqual(0, (await Binaries.RunCrestAsync([.. c, "exec", "-s", restored, "/bin/sh", "-c", "test -e /etc/motd"])).ExitCode);
    }

    private static async Task<(string ConfigDump, string Log)> ReadArchiveAsync(string archive)
    {
        string config = "", log = "";
        await using var f = File.OpenRead(archive);
        using var tar = new TarReader(f);
        while (await tar.GetNextEntryAsync(copyData: true, Ct) is { } e)
        {
            if (e.Name is "config.dump" or "container.log")
            {
                using var reader = new StreamReader(e.DataStream!);
                var text = await reader.ReadToEndAsync(Ct);
                (config, log) = e.Name == "config.dump" ? (text, log) : (config, text);
            }
        }

        return (config, log);
    }

}
