using System.Diagnostics;
using Crest.Core;
using Crest.TestKit;
using Grpc.Core;
using Runtime.V1;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

/// <summary>
/// crestd killed (SIGKILL) in the middle of CheckpointPod and RestorePod, at the crash points named in
/// <see cref="CrashPoints"/>, then started again on the same roots: nothing stays frozen and nothing half-made remains.
/// </summary>
public class PodCheckpointCrashTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private sealed record Node(TempDir Dir, string[] R, string PodConfig, string CounterConfig, string IdleConfig);

    private static async Task<Node> PrepareAsync(TempDir dir, CrestdProcess crestd)
    {
        string[] r = ["-r", crestd.Endpoint];
        await ImportBusyboxAsync(dir, r);
        var pod = await WritePodAsync(dir, "pair", "uid-pair");
        var counter = await CounterWorkload.WriteConfigAsync(dir, "localhost/e2e/busybox:v1");
        var idle = dir.Combine("idle.json");
        await File.WriteAllTextAsync(idle, """
            {"metadata": {"name": "idle"}, "image": {"image": "localhost/e2e/busybox:v1"},
             "command": ["/bin/busybox", "sleep", "100000"], "log_path": "idle.log", "linux": {} }
            """, Ct);
        return new Node(dir, r, pod, counter, idle);
    }

    private static async Task<(string Pod, string Counter, string Idle)> RunPairAsync(Node n, OwnedPods pods)
    {
        var podId = await pods.RunAsync(n.PodConfig);
        var counter = await RunAsync([.. n.R, "create", podId, n.CounterConfig, n.PodConfig]);
        await RunAsync([.. n.R, "start", counter]);
        var idle = await RunAsync([.. n.R, "create", podId, n.IdleConfig, n.PodConfig]);
        await RunAsync([.. n.R, "start", idle]);
        return (podId, counter, idle);
    }

    private static async Task<string> RuncStateAsync(TempDir dir, string id)
    {
        var (code, output) = await Tool("runc", "--root", dir.Combine("state", "runtime", "runc"), "state", id);
        Assert.True(code == 0, output);
        using var doc = System.Text.Json.JsonDocument.Parse(output);
        return doc.RootElement.GetProperty("status").GetString()!;
    }

    private static async Task WaitExitAsync(CrestdProcess crestd)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        cts.CancelAfter(TimeSpan.FromSeconds(30));
        await crestd.Process.WaitForExitAsync(cts.Token);
    }

    private static void RequireTools()
    {
        Requires.Root();
        Requires.Binary("conmon");
        Requires.Binary("criu");
        Requires.Binary("runc");
    }

    [Theory]
    [InlineData(CrashPoints.PodCheckpointFrozen)]
    [InlineData(CrashPoints.PodCheckpointWriting)]
    public async Task Crestd_killed_in_the_middle_of_CheckpointPod_leaves_after_a_restart_every_container_running_and_no_partial_checkpoint(string crashPoint)
    {
        RequireTools();
        using var dir = new TempDir("crest-e2e-pcc");
        var crestd = await CrestdProcess.StartReadyAsync(dir, environment: new Dictionary<string, string> { [CrashPoints.Variable] = crashPoint });
        var n = await PrepareAsync(dir, crestd);
        try
        {
            string counter, idle;
            await using (var pods = new OwnedPods(n.R))
            {
                (_, counter, idle) = await RunPairAsync(n, pods);
                var log = dir.Combine("logs-pair", "counter.log");
                await CountPassesAsync(log, 3);
                var output = dir.Combine("pod-ckpt");
                var podId = (await RunAsync([.. n.R, "pods", "-q"])).Trim();

                using (var channel = UnixGrpc.Channel(crestd.Socket))
                {
                    var call = new RuntimeService.RuntimeServiceClient(channel).CheckpointPodAsync(new CheckpointPodRequest { PodSandboxId = podId, OutputPath = output }, cancellationToken: Ct);
                    await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);
                }

                await WaitExitAsync(crestd);
                Assert.Equal(137, crestd.Process.ExitCode);
                if (crashPoint == CrashPoints.PodCheckpointFrozen)
                {
                    // The crash point is real: crestd died with the pod frozen.
                    Assert.Equal("paused", await RuncStateAsync(dir, counter));
                }

                await crestd.DisposeAsync();
                // Same roots, same socket: the pods' owner and n.R still name it.
                crestd = await CrestdProcess.StartReadyAsync(dir);

                Assert.Equal("running", await RuncStateAsync(dir, counter));
                Assert.Equal("running", await RuncStateAsync(dir, idle));
                var atRestart = LastCount(await ReadLogAsync(log));
                await CountPassesAsync(log, atRestart + 2, "the counter did not go on after crestd restarted: it was left frozen");
                Assert.False(Directory.Exists(output), $"{output} was left behind: {string.Join(", ", Directory.Exists(output) ? Directory.EnumerateFileSystemEntries(output, "*", SearchOption.AllDirectories) : [])}");
                Assert.Empty(Directory.EnumerateDirectories(dir.Combine("root", "containers"), "checkpoint-work-*", SearchOption.AllDirectories));
                Assert.Empty(Directory.Exists(dir.Combine("root", "pod-operations")) ? Directory.EnumerateFileSystemEntries(dir.Combine("root", "pod-operations")) : []);

                // And the pod checkpoints normally now.
                using var again = UnixGrpc.Channel(crestd.Socket);
                await new RuntimeService.RuntimeServiceClient(again).CheckpointPodAsync(new CheckpointPodRequest { PodSandboxId = podId, OutputPath = output }, cancellationToken: Ct);
                Assert.True(File.Exists(Path.Combine(output, "pod.json")), crestd.Log);
            }
        }
        finally
        {
            await crestd.DisposeAsync();
        }
    }

    [Fact]
    public async Task Crestd_killed_in_the_middle_of_RestorePod_leaves_after_a_restart_no_half_restored_pod()
    {
        RequireTools();
        using var dir = new TempDir("crest-e2e-pcr");
        var crestd = await CrestdProcess.StartReadyAsync(dir);
        var n = await PrepareAsync(dir, crestd);
        var output = dir.Combine("pod-ckpt");
        try
        {
            crestd = await CheckpointPairThenRestartAsync(n, crestd, output, CrashPoints.PodRestoreContainers);
            var request = await RestoreRequestAsync(dir, output);
            using (var channel = UnixGrpc.Channel(crestd.Socket))
            {
                var call = new RuntimeService.RuntimeServiceClient(channel).RestorePodAsync(request, cancellationToken: Ct);
                await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);
            }

            await WaitExitAsync(crestd);
            Assert.Equal(137, crestd.Process.ExitCode);
            await crestd.DisposeAsync();

            crestd = await CrestdProcess.StartReadyAsync(dir);
            string[] r = ["-r", crestd.Endpoint];
            await using var after = new OwnedPods(r);
            Assert.Equal("", await RunAsync([.. r, "pods", "-q"]));
            Assert.Equal("", await RunAsync([.. r, "ps", "-a", "-q"]));
            Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Combine("root", "containers")));
            Assert.Empty(Directory.Exists(dir.Combine("root", "restores")) ? Directory.EnumerateFileSystemEntries(dir.Combine("root", "restores")) : []);
            Assert.True(File.Exists(Path.Combine(output, "pod.json")), "the checkpoint itself must be left as it was");

            // The same checkpoint restores once crestd runs normally.
            using var again = UnixGrpc.Channel(crestd.Socket);
            var restored = await new RuntimeService.RuntimeServiceClient(again).RestorePodAsync(request, cancellationToken: Ct);
            Assert.Equal(2, restored.RestoredContainers.Count);
        }
        finally
        {
            await crestd.DisposeAsync();
        }
    }

    [Theory]
    [InlineData(CrashPoints.ContainerRestoreBegun)]
    [InlineData(CrashPoints.ContainerRestoreUnrecorded)]
    public async Task Crestd_killed_while_StartContainer_restores_leaves_the_container_running_or_exited_with_the_reason(string crashPoint)
    {
        RequireTools();
        using var dir = new TempDir("crest-e2e-rsc");
        var crestd = await CrestdProcess.StartReadyAsync(dir);
        var n = await PrepareAsync(dir, crestd);
        var output = dir.Combine("pod-ckpt");
        var log = dir.Combine("logs-pair", "counter.log");
        try
        {
            crestd = await CheckpointPairThenRestartAsync(n, crestd, output, crashPoint);
            var request = await RestoreRequestAsync(dir, output);
            Dictionary<string, string> ids;
            using (var channel = UnixGrpc.Channel(crestd.Socket))
            {
                var client = new RuntimeService.RuntimeServiceClient(channel);
                var restored = await client.RestorePodAsync(request, cancellationToken: Ct);
                ids = restored.RestoredContainers.ToDictionary(c => c.Name, c => c.ContainerId);
                var start = client.StartContainerAsync(new StartContainerRequest { ContainerId = ids["counter"] }, cancellationToken: Ct);
                await Assert.ThrowsAsync<RpcException>(() => start.ResponseAsync);
            }

            await WaitExitAsync(crestd);
            await crestd.DisposeAsync();
            crestd = await CrestdProcess.StartReadyAsync(dir);
            await using var after = new OwnedPods(n.R);
            var status = (await InspectAsync(n.R, ids["counter"])).GetProperty("status");
            if (crashPoint == CrashPoints.ContainerRestoreBegun)
            {
                // CRIU never ran: the container says so, and starting it again is refused with what to do.
                Assert.Equal("CONTAINER_EXITED", status.GetProperty("state").GetString());
                Assert.Equal("StartError", status.GetProperty("reason").GetString());
                Assert.Contains("did not complete", status.GetProperty("message").GetString(), StringComparison.Ordinal);
                var again = await Binaries.RunCrestAsync([.. n.R, "start", ids["counter"]]);
                Assert.NotEqual(0, again.ExitCode);
                Assert.Contains("create it again", again.Stderr, StringComparison.Ordinal);
            }
            else
            {
                // CRIU restored it before crestd died: the process is adopted, and (held stopped for its pod) continued.
                Assert.Equal("CONTAINER_RUNNING", status.GetProperty("state").GetString());
                var atRestart = LastCount(await ReadLogAsync(log));
                await CountPassesAsync(log, atRestart + 2, "the adopted counter does not count: " + crestd.Log);
            }

            // The pod's other container restores normally afterwards.
            await RunAsync([.. n.R, "start", ids["idle"]]);
            Assert.Equal("CONTAINER_RUNNING", await StateAsync(n.R, ids["idle"]));
        }
        finally
        {
            await crestd.DisposeAsync();
        }
    }

    /// <summary>
    /// Runs the pair, checkpoints the pod into <paramref name="output"/>, removes it, stops crestd and starts it again on
    /// the same roots with <paramref name="crashPoint"/> armed; returns the new crestd (the old one is disposed).
    /// </summary>
    private static async Task<CrestdProcess> CheckpointPairThenRestartAsync(Node n, CrestdProcess crestd, string output, string crashPoint)
    {
        await using (var pods = new OwnedPods(n.R))
        {
            var (podId, _, _) = await RunPairAsync(n, pods);
            await CountPassesAsync(n.Dir.Combine("logs-pair", "counter.log"), 3);
            using (var channel = UnixGrpc.Channel(crestd.Socket))
            {
                await new RuntimeService.RuntimeServiceClient(channel).CheckpointPodAsync(new CheckpointPodRequest { PodSandboxId = podId, OutputPath = output }, cancellationToken: Ct);
            }

            await RunAsync([.. n.R, "stopp", podId]);
            await pods.RemoveAsync(podId);
        }

        await crestd.StopAsync();
        await crestd.DisposeAsync();
        return await CrestdProcess.StartReadyAsync(n.Dir, environment: new Dictionary<string, string> { [CrashPoints.Variable] = crashPoint });
    }

    /// <summary>A RestorePod request as a kubelet would send it: the pod's config and the containers' configs, from the test's crictl files.</summary>
    private static async Task<RestorePodRequest> RestoreRequestAsync(TempDir dir, string checkpoint)
    {
        var parser = new Google.Protobuf.JsonParser(Google.Protobuf.JsonParser.Settings.Default.WithIgnoreUnknownFields(true));
        var pod = parser.Parse<PodSandboxConfig>(await File.ReadAllTextAsync(dir.Combine("pod-pair.json"), Ct));
        pod.Metadata.Attempt = 2;
        var request = new RestorePodRequest { CheckpointPath = checkpoint, Config = pod };
        request.ContainerConfigs.Add(parser.Parse<ContainerConfig>(await File.ReadAllTextAsync(dir.Combine("counter.json"), Ct)));
        request.ContainerConfigs.Add(parser.Parse<ContainerConfig>(await File.ReadAllTextAsync(dir.Combine("idle.json"), Ct)));
        return request;
    }
}
