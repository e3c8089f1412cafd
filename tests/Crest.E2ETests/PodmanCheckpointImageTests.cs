using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

/// <summary>A checkpoint image made and pushed by Podman 5.8, pulled and restored by Crest (reference scenario 5 with another engine's image).</summary>
public partial class PodmanInteropTests
{
    private static readonly string[] Markers =
    [
        "org.criu.checkpoint.container.name",
        "io.kubernetes.cri-o.annotations.checkpoint.name",
        "io.podman.annotations.checkpoint.name",
    ];

    /// <summary>
    /// <c>podman container checkpoint --create-image</c> makes a checkpoint image whose manifest carries only Podman's
    /// family of annotations (<c>io.podman.annotations.checkpoint.*</c>: name, rawImageName, rootfsImageID/Name, runtime,
    /// CRIU, conmon, kernel, ...) plus <c>org.opencontainers.image.*</c>, and one layer whose root is the same files as its
    /// <c>--export</c> archive (config.dump, spec.dump, checkpoint/, rootfs-diff.tar, deleted.files, ctr.log, ...);
    /// <c>podman push</c> sends it as an OCI manifest. Crest pulls it, detects it by Podman's marker alone, pulls the base
    /// image by the tag config.dump names, and restores it into a new pod by reference and by image ID with
    /// <c>user_specified_image</c> (as the kubelet sends it); <c>crest checkpoint inspect</c> reads it from the registry.
    /// </summary>
    [Fact]
    public async Task Crest_restores_a_podman_checkpoint_image_from_a_registry_by_reference_and_by_image_id()
    {
        RequireTools();
        await using var registry = await LocalRegistry.StartAsync();
        using var dir = new TempDir("crest-e2e-podman-img");
        var name = $"{registry.Host}/e2e/busybox:v1";
        var checkpointImage = $"{registry.Host}/e2e/podman-ckpt:v1";
        await PushBusyboxAsync(dir, name);
        var startedAt = DateTimeOffset.UtcNow;

        // 1. Podman: a counter from the registry's base image, rootfs changes, a checkpoint image, pushed back.
        var podman = new Podman(dir);
        int lastBefore;
        try
        {
            await podman.RunAsync("pull", "--tls-verify=false", name);
            await podman.RunAsync(["container", "run", "-d", "--name", "counter", .. Podman.RunFlags, name, "sh", "-c", CounterWorkload.Script]);
            await podman.CountPassesAsync("counter", 3);
            await podman.RunAsync("exec", "counter", "sh", "-c", "mkdir -p /root; touch /root/testfile; rm /etc/motd");
            await podman.RunAsync("container", "checkpoint", "--create-image", checkpointImage, "counter");
            // Podman stops the container at checkpoint: its log ends where CRIU froze it.
            lastBefore = PodmanLastCount(await podman.RunAsync("logs", "counter"));
            await podman.RunAsync("push", "--tls-verify=false", checkpointImage);
        }
        finally
        {
            await podman.CleanUpAsync();
        }

        Assert.True(lastBefore > 0, "Podman's log holds no count before the checkpoint");

        // The pushed image, as skopeo (an independent client) sees it: one OCI manifest with Podman's marker only.
        var raw = await Tool("skopeo", "inspect", "--tls-verify=false", "--raw", $"docker://{checkpointImage}");
        Assert.True(raw.ExitCode == 0, raw.Output);
        using (var manifest = JsonDocument.Parse(raw.Output))
        {
            var m = manifest.RootElement;
            Assert.Equal("application/vnd.oci.image.manifest.v1+json", m.GetProperty("mediaType").GetString());
            var layers = m.GetProperty("layers").EnumerateArray().ToList();
            Assert.Single(layers);
            Assert.StartsWith("application/vnd.oci.image.layer.v1.tar", layers[0].GetProperty("mediaType").GetString(), StringComparison.Ordinal);
            var keys = m.GetProperty("annotations").EnumerateObject().Select(a => a.Name).ToList();
            Assert.Equal(["io.podman.annotations.checkpoint.name"], Markers.Where(keys.Contains));
            Assert.Equal("counter", m.GetProperty("annotations").GetProperty("io.podman.annotations.checkpoint.name").GetString());
            Assert.Equal(name, m.GetProperty("annotations").GetProperty("io.podman.annotations.checkpoint.rootfsImageName").GetString());
            Assert.All(keys, k => Assert.True(
                k.StartsWith("io.podman.annotations.checkpoint.", StringComparison.Ordinal) || k.StartsWith("org.opencontainers.image.", StringComparison.Ordinal),
                $"unexpected annotation {k} on Podman's checkpoint image"));
        }

        // 2. crest checkpoint inspect, with no daemon: straight from the registry, the command line from the checkpointed memory.
        var remote = await Binaries.RunCrestAsync(["checkpoint", "inspect", checkpointImage]);
        Assert.True(remote.ExitCode == 0, remote.Stderr);
        Assert.Matches(@"Engine:\s+Podman\n", remote.Stdout);
        Assert.Matches(@"\n1\s+sh -c " + Regex.Escape(CounterWorkload.Script) + @"\n", remote.Stdout);
        Assert.Contains($"Base image:      {name}", remote.Stdout, StringComparison.Ordinal);
        Assert.DoesNotContain("0001-01-01", remote.Stdout, StringComparison.Ordinal);

        // 3. Crest: pull the checkpoint image (not its base image), then restore it twice into a new pod.
        await using var crestd = await CrestdProcess.StartReadyAsync(dir, RestoreOn);
        string[] r = ["-r", crestd.Endpoint];
        await RunAsync([.. r, "pull", checkpointImage]);
        string imageId;
        using (var inspecti = JsonDocument.Parse(await RunAsync([.. r, "inspecti", checkpointImage])))
        {
            imageId = inspecti.RootElement.GetProperty("status").GetProperty("id").GetString()!;
            var annotations = inspecti.RootElement.GetProperty("info").GetProperty("annotations").EnumerateObject().Select(a => a.Name).ToList();
            Assert.Equal(["io.podman.annotations.checkpoint.name"], Markers.Where(annotations.Contains));
        }

        var pod = await WritePodAsync(dir, "podman-img", "uid-podman-img");
        await using var pods = new OwnedPods(r);
        var podId = await pods.RunAsync(pod);
        // Podman's /run/.containerenv bind mount must be declared again (see the archive test).
        var containerEnv = dir.Combine("containerenv");
        await File.WriteAllTextAsync(containerEnv, "", Ct);
        var restores = new (string Name, string ImageJson, string Shown)[]
        {
            ("by-ref", $$"""{"image": "{{checkpointImage}}"}""", checkpointImage),
            ("by-id", $$"""{"image": "{{imageId}}", "user_specified_image": "{{checkpointImage}}"}""", checkpointImage),
        };
        foreach (var (ctrName, imageJson, shown) in restores)
        {
            var config = dir.Combine($"restore-{ctrName}.json");
            await File.WriteAllTextAsync(config, $$"""
                {"metadata": {"name": "{{ctrName}}"}, "image": {{imageJson}},
                 "mounts": [{"container_path": "/run/.containerenv", "host_path": "{{containerEnv}}", "readonly": true}],
                 "log_path": "{{ctrName}}.log", "linux": {"security_context": {"namespace_options": {"pid": "CONTAINER"} } } }
                """, Ct);
            var create = await Binaries.RunCrestAsync([.. r, "create", podId, config, pod]);
            Assert.True(create.ExitCode == 0, $"{ctrName}: Crest refused to restore Podman's checkpoint image: {create.Stderr}\n{crestd.Log}");
            var restored = create.Stdout.Trim();
            var start = await Binaries.RunCrestAsync([.. r, "start", restored]);
            Assert.True(start.ExitCode == 0, $"{ctrName}: {start.Stderr}\n{RestoreLog(dir, restored)}\n{crestd.Log}");

            // The copied ctr.log, then the restored process going on from Podman's last count, never starting over.
            var log = await WaitForCountAsync(dir.Combine("logs-podman-img", $"{ctrName}.log"), lastBefore + 3);
            var copyEnd = $"stdout F count {lastBefore}\n";
            var at = log.IndexOf(copyEnd, StringComparison.Ordinal);
            Assert.True(at >= 0 && CountLine().Match(log).Groups[1].Value == "1",
                $"{ctrName}: the log does not start with Podman's log up to count {lastBefore}:\n{log[..Math.Min(400, log.Length)]}");
            var after = log[(at + copyEnd.Length)..];
            var counts = CountLine().Matches(after).Select(c => int.Parse(c.Groups[1].Value, CultureInfo.InvariantCulture)).ToList();
            Assert.NotEmpty(counts);
            Assert.InRange(counts[0], lastBefore, lastBefore + 2);
            Assert.True(counts.Zip(counts.Skip(1)).All(p => p.Second == p.First + 1), $"{ctrName}: the restored counter skips, repeats or starts over:\n{after}");
            Assert.True(counts[^1] > lastBefore + 2, $"{ctrName}: the counter did not go on from {lastBefore}:\n{after}\n{crestd.Log}");

            Assert.Equal(0, (await Binaries.RunCrestAsync([.. r, "exec", "-s", restored, "/bin/sh", "-c", "test -f /root/testfile"])).ExitCode);
            Assert.NotEqual(0, (await Binaries.RunCrestAsync([.. r, "exec", "-s", restored, "/bin/sh", "-c", "test -e /etc/motd"])).ExitCode);

            var status = (await InspectAsync(r, restored)).GetProperty("status");
            Assert.Equal("CONTAINER_RUNNING", status.GetProperty("state").GetString());
            Assert.Equal(name, status.GetProperty("image").GetProperty("image").GetString());
            var annotations = status.GetProperty("annotations");
            Assert.Equal("true", annotations.GetProperty("restored").GetString());
            Assert.Equal(shown, annotations.GetProperty("checkpointImage").GetString());
            // Podman's config.dump has no checkpointedTime; the time CRIU wrote inventory.img stands in, not the year 1.
            var checkpointedAt = DateTimeOffset.Parse(annotations.GetProperty("checkpointedAt").GetString()!, CultureInfo.InvariantCulture);
            Assert.True(checkpointedAt > startedAt.AddMinutes(-5) && checkpointedAt < DateTimeOffset.UtcNow.AddMinutes(5), $"checkpointedAt {checkpointedAt:O}");
        }

        Assert.Contains($"(Podman checkpoint, base image {name})", await crestd.LoggedAsync($"(Podman checkpoint, base image {name})"), StringComparison.Ordinal);
    }

    /// <summary>The highest "count N" in podman logs (plain lines, no CRI prefix).</summary>
    private static int PodmanLastCount(string log) =>
        PodmanCount().Matches(log).Select(m => int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)).DefaultIfEmpty(0).Max();

    [GeneratedRegex(@"count (\d+)")]
    private static partial Regex PodmanCount();
}
