using System.Diagnostics;
using System.Formats.Tar;
using System.Text.Json.Nodes;
using Crest.TestKit;
using Runtime.V1;

namespace Crest.Bench;

/// <summary>
/// Pod lifecycle latency: RunPodSandbox + CreateContainer + StartContainer, then StopContainer +
/// RemoveContainer + StopPodSandbox + RemovePodSandbox, on a busybox image loaded offline into each runtime.
/// containerd needs a pause image: catatonit from the host, packaged as one and pinned in its config.
/// </summary>
internal static class PodScenario
{
    public const string BusyboxName = "localhost/crest-bench/busybox:v1";
    public const string PauseName = "localhost/crest-bench/pause:v1";

    private static readonly TestLayer BusyboxLayer = new(LayerCompression.Gzip, t =>
    {
        TestImages.Dir(t, "bin");
        TestImages.File(t, "bin/busybox", File.ReadAllBytes(TestImages.BusyboxStatic), mode: 0x1ED);
        TestImages.Symlink(t, "bin/sh", "busybox");
    });

    /// <summary>The busybox image as an OCI layout (tag v1), to push to a registry.</summary>
    public static void WriteBusyboxLayout(string layout) =>
        TestImages.WriteLayout(layout, [BusyboxLayer], "v1", config => config["config"]!["Cmd"] = new JsonArray(JsonValue.Create("/bin/sh")));

    /// <summary>Writes OCI archives for the busybox and pause images, each named by the io.containerd.image.name annotation.</summary>
    public static (string Busybox, string Pause) WriteArchives(string dir)
    {
        string Archive(string name, TestLayer layer, string[] entrypoint)
        {
            var layout = Path.Combine(dir, name.Replace('/', '_').Replace(':', '_'));
            TestImages.WriteLayout(layout, [layer], "v1", config => config["config"]!["Cmd"] = new JsonArray([.. entrypoint.Select(e => (JsonNode)JsonValue.Create(e))]));
            var indexPath = Path.Combine(layout, "index.json");
            var index = JsonNode.Parse(File.ReadAllText(indexPath))!;
            index["manifests"]![0]!["annotations"] = new JsonObject
            {
                ["io.containerd.image.name"] = name,
                ["org.opencontainers.image.ref.name"] = name,
            };
            File.WriteAllText(indexPath, index.ToJsonString());
            var archive = layout + ".tar";
            TestImages.TarDirectory(layout, archive);
            return archive;
        }

        var busybox = Archive(BusyboxName, BusyboxLayer, ["/bin/sh"]);
        var pause = Archive(PauseName, new TestLayer(LayerCompression.Gzip, t =>
            TestImages.File(t, "pause", File.ReadAllBytes("/usr/bin/catatonit"), mode: 0x1ED)), ["/pause", "-P"]);
        return (busybox, pause);
    }

    /// <summary>The scenario's images into one subject: busybox for crestd (no pause image), busybox and pause for containerd.</summary>
    public static async Task LoadImagesAsync(string subject, string socket, string busybox, string pause)
    {
        if (subject == "crest")
        {
            await LoadIntoCrestAsync(socket, busybox);
            return;
        }

        await LoadIntoContainerdAsync(socket, busybox);
        await LoadIntoContainerdAsync(socket, pause);
    }

    public static async Task LoadIntoCrestAsync(string socket, string archive)
    {
        using var channel = UnixGrpc.Channel(socket);
        await new Crest.Api.V1.CrestImages.CrestImagesClient(channel).LoadArchiveAsync(new Crest.Api.V1.LoadArchiveRequest { Path = archive });
    }

    public static async Task LoadIntoContainerdAsync(string socket, string archive)
    {
        using var p = Process.Start(new ProcessStartInfo("ctr", ["-a", socket, "-n", "k8s.io", "images", "import", archive])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        })!;
        var err = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"ctr import {archive} failed: {err}");
        }
    }

    /// <summary>The per-call rows: (row, value of a cycle); each is a target (crest median at or under containerd's).</summary>
    private static readonly (string Row, Func<Cycle, double> Value)[] CallRows =
    [
        ("RunPodSandbox", c => c.RunPod),
        ("CreateContainer", c => c.Create),
        ("StartContainer", c => c.Start),
        ("StopContainer (timeout 0)", c => c.Stop),
        ("RemoveContainer", c => c.Remove),
        ("StopPodSandbox + RemovePodSandbox", c => c.StopPod),
    ];

    /// <summary>
    /// Pod lifecycles with every CRI call timed: both subjects run side by side on fresh roots, one untimed cycle each,
    /// then <paramref name="runs"/> cycles each, alternating crest and containerd, so load from elsewhere on the machine
    /// falls on both alike.
    /// </summary>
    public static async Task RunCallsAsync(Report report, IReadOnlyList<Subject> subjects, int runs)
    {
        using var work = new TempDir("crest-bench-pods");
        var (busybox, pause) = WriteArchives(work.Path);
        var running = new List<(Subject Subject, RunningSubject Daemon, string Logs)>();
        try
        {
            foreach (var subject in subjects)
            {
                var daemon = await subject.StartAsync();
                running.Add((subject, daemon, work.CreateDirectory("logs-" + subject.Name)));
                await LoadImagesAsync(subject.Name, daemon.Socket, busybox, pause);
                await CycleAsync(daemon.Socket, running[^1].Logs, 999);
            }

            for (var r = 0; r < runs; r++)
            {
                foreach (var (subject, daemon, logs) in r % 2 == 0 ? running : Enumerable.Reverse(running))
                {
                    var cycle = await CycleAsync(daemon.Socket, logs, r);
                    foreach (var (row, value) in CallRows)
                    {
                        report.Add(row, "ms", subject.Name, value(cycle));
                    }

                    report.Add("pod + container up (run, create, start)", "ms", subject.Name, cycle.Up);
                    report.Add("pod + container down (stop, remove)", "ms", subject.Name, cycle.Down);
                }
            }
        }
        finally
        {
            foreach (var (_, daemon, _) in running)
            {
                await daemon.DisposeAsync();
            }
        }

        foreach (var (row, _) in CallRows)
        {
            report.Target(row, 1.0);
        }

        report.Note($"per-call rows: one pod with one busybox sleep container per cycle (images loaded offline), each CRI call timed from the client; both daemons running at once, one untimed cycle each, then {runs} cycles each in alternating order. Target: crest median at or under containerd's (ratio ≤ 1.00).");
    }

    /// <summary>One pod cycle's CRI calls, each timed alone (milliseconds); StopPod is StopPodSandbox + RemovePodSandbox.</summary>
    public sealed record Cycle(double RunPod, double Create, double Start, double Stop, double Remove, double StopPod)
    {
        public double Up => RunPod + Create + Start;

        public double Down => Stop + Remove + StopPod;
    }

    public static async Task<Cycle> CycleAsync(string socket, string logDir, int n)
    {
        using var channel = UnixGrpc.Channel(socket);
        var rt = new RuntimeService.RuntimeServiceClient(channel);
        var pod = new PodSandboxConfig
        {
            Metadata = new PodSandboxMetadata { Name = $"bench{n}", Uid = $"uid-bench{n}", Namespace = "bench", Attempt = 1 },
            Hostname = $"bench{n}",
            LogDirectory = logDir,
            Linux = new LinuxPodSandboxConfig(),
        };
        var container = new ContainerConfig
        {
            Metadata = new ContainerMetadata { Name = "sleep" },
            Image = new ImageSpec { Image = BusyboxName },
            Command = { "/bin/busybox", "sleep", "3600" },
            LogPath = $"sleep{n}.log",
            Linux = new LinuxContainerConfig(),
        };
        var deadline = DateTime.UtcNow.AddMinutes(2);
        var clock = Stopwatch.StartNew();
        double Lap()
        {
            var ms = clock.Elapsed.TotalMilliseconds;
            clock.Restart();
            return ms;
        }

        var p = await rt.RunPodSandboxAsync(new RunPodSandboxRequest { Config = pod }, deadline: deadline);
        var runPod = Lap();
        var c = await rt.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = p.PodSandboxId, Config = container, SandboxConfig = pod }, deadline: deadline);
        var create = Lap();
        await rt.StartContainerAsync(new StartContainerRequest { ContainerId = c.ContainerId }, deadline: deadline);
        var start = Lap();
        await rt.StopContainerAsync(new StopContainerRequest { ContainerId = c.ContainerId, Timeout = 0 }, deadline: deadline);
        var stop = Lap();
        await rt.RemoveContainerAsync(new RemoveContainerRequest { ContainerId = c.ContainerId }, deadline: deadline);
        var remove = Lap();
        await rt.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = p.PodSandboxId }, deadline: deadline);
        await rt.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = p.PodSandboxId }, deadline: deadline);
        return new Cycle(runPod, create, start, stop, remove, Lap());
    }
}
