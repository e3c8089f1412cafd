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

        var busybox = Archive(BusyboxName, new TestLayer(LayerCompression.Gzip, t =>
        {
            TestImages.Dir(t, "bin");
            TestImages.File(t, "bin/busybox", File.ReadAllBytes(TestImages.BusyboxStatic), mode: 0x1ED);
            TestImages.Symlink(t, "bin/sh", "busybox");
        }), ["/bin/sh"]);
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

    public static async Task<(TimeSpan Up, TimeSpan Down)> CycleAsync(string socket, string logDir, int n)
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
        var up = Stopwatch.StartNew();
        var p = await rt.RunPodSandboxAsync(new RunPodSandboxRequest { Config = pod }, deadline: deadline);
        var c = await rt.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = p.PodSandboxId, Config = container, SandboxConfig = pod }, deadline: deadline);
        await rt.StartContainerAsync(new StartContainerRequest { ContainerId = c.ContainerId }, deadline: deadline);
        up.Stop();
        var down = Stopwatch.StartNew();
        await rt.StopContainerAsync(new StopContainerRequest { ContainerId = c.ContainerId, Timeout = 0 }, deadline: deadline);
        await rt.RemoveContainerAsync(new RemoveContainerRequest { ContainerId = c.ContainerId }, deadline: deadline);
        await rt.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = p.PodSandboxId }, deadline: deadline);
        await rt.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = p.PodSandboxId }, deadline: deadline);
        down.Stop();
        return (up.Elapsed, down.Elapsed);
    }
}
