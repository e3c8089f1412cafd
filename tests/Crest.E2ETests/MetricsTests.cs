using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

/// <summary>
/// crestd's Prometheus endpoint as an operator uses it: a real Prometheus (Debian's) scrapes it, and the checkpoint,
/// the CRI calls and the containers by state are read back through Prometheus's query API.
/// </summary>
public class MetricsTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Prometheus_scrapes_the_checkpoint_the_cri_calls_and_the_containers_by_state()
    {
        Requires.Root();
        Requires.Binary("conmon");
        Requires.Binary("criu");
        Requires.Binary("prometheus");
        using var dir = new TempDir("crest-e2e-metrics");
        var metricsPort = FreePort();
        await using var crestd = await CrestdProcess.StartReadyAsync(dir, $"""
            [metrics]
            address = "127.0.0.1:{metricsPort}"
            """);
        string[] r = ["-r", crestd.Endpoint];

        var promPort = FreePort();
        var promConfig = dir.Combine("prometheus.yml");
        await File.WriteAllTextAsync(promConfig, $$"""
            global: {scrape_interval: 1s, evaluation_interval: 1s}
            scrape_configs:
              - job_name: crestd
                static_configs: [{targets: ["127.0.0.1:{{metricsPort}}"]}]
            """, Ct);
        using var prometheus = Process.Start(new ProcessStartInfo("prometheus")
        {
            ArgumentList = { "--config.file", promConfig, "--storage.tsdb.path", dir.CreateDirectory("tsdb"), "--web.listen-address", $"127.0.0.1:{promPort}" },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        })!;
        var promLog = new System.Text.StringBuilder();
        prometheus.ErrorDataReceived += (_, e) => { lock (promLog) { promLog.AppendLine(e.Data); } };
        prometheus.OutputDataReceived += (_, e) => { lock (promLog) { promLog.AppendLine(e.Data); } };
        prometheus.BeginErrorReadLine();
        prometheus.BeginOutputReadLine();
        try
        {
            await ImportBusyboxAsync(dir, r);
            var pod = await WritePodAsync(dir, "metrics", "uid-metrics");
            var container = dir.Combine("sleeper.json");
            await File.WriteAllTextAsync(container, """
                {"metadata": {"name": "sleeper"}, "image": {"image": "localhost/e2e/busybox:v1"},
                 "command": ["/bin/busybox", "sleep", "600"], "log_path": "sleeper.log", "linux": {} }
                """, Ct);
            await using var pods = new OwnedPods(r);
            var podId = await pods.RunAsync(pod);
            {
                var id = await RunAsync([.. r, "create", podId, container, pod]);
                await RunAsync([.. r, "start", id]);
                await RunAsync([.. r, "checkpoint", "--export", dir.Combine("sleeper.tar"), id]);
                using (var channel = UnixGrpc.Channel(crestd.Socket))
                {
                    await new Runtime.V1.RuntimeService.RuntimeServiceClient(channel).CheckpointPodAsync(
                        new Runtime.V1.CheckpointPodRequest { PodSandboxId = podId, OutputPath = dir.Combine("pod-ckpt") }, cancellationToken: Ct);
                }

                using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{promPort}") };
                var checkpoints = await QueryUntilAsync(http, "crest_checkpoint_duration_seconds_count", v => v >= 1, () => promLog.ToString());
                var calls = await QueryUntilAsync(http, "crest_cri_requests_total{method=\"CheckpointContainer\",code=\"OK\"}", v => v >= 1, () => promLog.ToString());
                var running = await QueryUntilAsync(http, "crest_containers{state=\"running\"}", v => v >= 1, () => promLog.ToString());
                var readyPods = await QueryUntilAsync(http, "crest_pods{state=\"ready\"}", v => v >= 1, () => promLog.ToString());
                var podCheckpoints = await QueryUntilAsync(http, "crest_pod_checkpoint_total{result=\"ok\"}", v => v >= 1, () => promLog.ToString());
                var podFrozen = await QueryUntilAsync(http, "crest_pod_checkpoint_frozen_seconds_count", v => v >= 1, () => promLog.ToString());
                using var direct = new HttpClient();
                var text = await direct.GetStringAsync(new Uri($"http://127.0.0.1:{metricsPort}/metrics"), Ct);
                using var elsewhere = await direct.GetAsync(new Uri($"http://127.0.0.1:{metricsPort}/"), Ct);
                var info = await RunAsync([.. r, "info"]);

                Assert.Equal(1, checkpoints);
                Assert.Equal(1, calls);
                Assert.Equal(1, running);
                Assert.Equal(1, readyPods);
                Assert.Equal(1, podCheckpoints);
                Assert.Equal(1, podFrozen);
                Assert.Contains("process_cpu_seconds_total", text, StringComparison.Ordinal);
                Assert.Contains("crest_checkpoint_size_bytes_bucket", text, StringComparison.Ordinal);
                Assert.Equal(HttpStatusCode.NotFound, elsewhere.StatusCode);
                Assert.Contains($"\"metricsAddress\": \"http://127.0.0.1:{metricsPort}/metrics\"", info, StringComparison.Ordinal);
            }
        }
        finally
        {
            prometheus.Kill();
            await prometheus.WaitForExitAsync(CancellationToken.None);
        }
    }

    /// <summary>The value of an instant query once <paramref name="wanted"/> holds for it; fails after 60 s with what it saw.</summary>
    private static async Task<double> QueryUntilAsync(HttpClient http, string query, Func<double, bool> wanted, Func<string> log)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        var last = "(no answer)";
        while (DateTime.UtcNow < deadline)
        {
            try
            {
                last = await http.GetStringAsync(new Uri("/api/v1/query?query=" + Uri.EscapeDataString(query), UriKind.Relative), Ct);
                using var doc = JsonDocument.Parse(last);
                var result = doc.RootElement.GetProperty("data").GetProperty("result");
                if (result.GetArrayLength() > 0)
                {
                    var value = double.Parse(result[0].GetProperty("value")[1].GetString()!, System.Globalization.CultureInfo.InvariantCulture);
                    if (wanted(value))
                    {
                        return value;
                    }
                }
            }
            catch (HttpRequestException)
            {
                // Prometheus is still starting.
            }

            await Task.Delay(250, Ct);
        }

        Assert.Fail($"Prometheus never answered {query} as wanted; last answer: {last}\n{log()}");
        return 0;
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
