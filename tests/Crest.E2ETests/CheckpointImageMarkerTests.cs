using System.Formats.Tar;
using System.Text.Json;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

public partial class CheckpointCliTests
{
    /// <summary>
    /// Reference scenario 5 with CRI-O's marker alone: an image built as the Kubernetes blog's buildah recipe builds it
    /// (one layer whose root is the archive's files, <c>io.kubernetes.cri-o.annotations.checkpoint.name</c> on the
    /// manifest and no other checkpoint annotation), written as an OCI layout, pushed by skopeo, pulled by crest and
    /// restored by reference: the counter continues and the rootfs changes are there.
    /// </summary>
    [Fact]
    public async Task A_checkpoint_image_with_only_the_cri_o_marker_is_detected_and_restores()
    {
        RequireCheckpointTools();
        Requires.Binary("docker-registry");
        Requires.Binary("skopeo");
        await using var registry = await LocalRegistry.StartAsync();
        var checkpointImage = $"{registry.Host}/e2e/crio-marker:v1";
        using var dir = new TempDir("crest-e2e-crio-img");
        await using var s = await StartAsync(dir);
        var crestd = s.Crestd;
        var r = s.R;
        var (podId, id) = await RunCounterAsync(s);
        var archive = dir.Combine("cp.tar");
        await CountPassesAsync(dir.Combine("logs-counter", "counter.log"), 3);
        await RunAsync([.. r, "exec", "-s", id, "/bin/sh", "-c", "touch /root/testfile && rm /etc/motd"]);
        await RunAsync([.. r, "checkpoint", "--export", archive, id]);
        var lastBefore = LastCount(await File.ReadAllTextAsync(dir.Combine("logs-counter", "counter.log"), Ct));
        await RunAsync([.. r, "rmp", podId]);

        var layout = dir.CreateDirectory("crio-layout");
        TestImages.WriteLayout(layout, [new TestLayer(LayerCompression.Gzip, t =>
        {
            using var f = File.OpenRead(archive);
            using var reader = new TarReader(f);
            while (reader.GetNextEntry(copyData: true) is { } e)
            {
                t.WriteEntry(e);
            }
        })], "v1", manifestAnnotations: new Dictionary<string, string> { ["io.kubernetes.cri-o.annotations.checkpoint.name"] = "counter" });
        await TestImages.PushAsync(layout, "v1", checkpointImage);

        await RunAsync([.. r, "pull", checkpointImage]);
        using (var inspecti = JsonDocument.Parse(await RunAsync([.. r, "inspecti", checkpointImage])))
        {
            var keys = inspecti.RootElement.GetProperty("info").GetProperty("annotations").EnumerateObject().Select(a => a.Name).ToList();
            Assert.Equal(["io.kubernetes.cri-o.annotations.checkpoint.name"], keys);
        }

        var remote = await Binaries.RunCrestAsync(["checkpoint", "inspect", checkpointImage]);
        Assert.True(remote.ExitCode == 0, remote.Stderr);
        Assert.Matches(@"\n\d+\s+/bin/busybox sh -c i=0; while true; do", remote.Stdout);

        var newPod = await WritePodAsync(dir, "crio-img", "uid-crio-img");
        var newPodId = await s.Pods.RunAsync(newPod);
        var config = dir.Combine("restore.json");
        await File.WriteAllTextAsync(config, $$"""
            {"metadata": {"name": "counter"}, "image": {"image": "{{checkpointImage}}"}, "log_path": "counter.log", "linux": {} }
            """, Ct);
        var create = await Binaries.RunCrestAsync([.. r, "create", newPodId, config, newPod]);
        Assert.True(create.ExitCode == 0, $"the CRI-O-marked image was not restored: {create.Stderr}\n{crestd.Log}");
        var restored = create.Stdout.Trim();
        await RunAsync([.. r, "start", restored]);
        var log = await WaitForCountAsync(dir.Combine("logs-crio-img", "counter.log"), lastBefore + 2);
        Assert.True(LastCount(log) > lastBefore + 2, $"the counter did not continue from {lastBefore}:\n{log[^Math.Min(400, log.Length)..]}");
        var counts = CountLine().Matches(log).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.True(counts.Zip(counts.Skip(1)).All(p => p.Second > p.First), $"the restored counter started over instead of continuing:\n{log}");
        Assert.Equal(0, (await Binaries.RunCrestAsync([.. r, "exec", "-s", restored, "/bin/sh", "-c", "test -f /root/testfile"])).ExitCode);
        Assert.NotEqual(0, (await Binaries.RunCrestAsync([.. r, "exec", "-s", restored, "/bin/sh", "-c", "test -e /etc/motd"])).ExitCode);
        var annotations = (await InspectAsync(r, restored)).GetProperty("status").GetProperty("annotations");
        Assert.Equal("true", annotations.GetProperty("restored").GetString());
        Assert.Equal(checkpointImage, annotations.GetProperty("checkpointImage").GetString());
    }
}
