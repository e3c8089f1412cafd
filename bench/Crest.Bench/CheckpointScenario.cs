using System.Diagnostics;
using System.Formats.Tar;
using Crest.TestKit;
using Runtime.V1;

namespace Crest.Bench;

/// <summary>
/// Checkpoint and restore through CRI of the same workloads on each runtime: an idle counter, and processes holding
/// 256 MiB and 1 GiB of touched memory (busybox awk building a string of that size). For Crest, bare
/// <c>runc checkpoint --leave-running</c> of the same container, and <c>runc restore</c> of those images into a copy
/// of its bundle after it stopped, are the floor: what CRIU and runc cost with no runtime around them.
/// </summary>
internal static class CheckpointScenario
{
    public static readonly (string Name, long Bytes)[] Workloads = [("idle counter", 0), ("256 MiB touched", 256L << 20), ("1 GiB touched", 1L << 30)];

    public sealed record Sample(double CheckpointMs, double? FrozenMs, long ArchiveBytes, double? BareRuncMs, double? BareFrozenMs, double? RestoreMs, double? BareRuncRestoreMs, double? ImageRestoreMs = null)
    {
        /// <summary>CRIU's frozen time of the untimed first checkpoint of the process (a first dump costs more).</summary>
        public double? FirstFrozenMs { get; init; }
    }

    private static ContainerConfig Workload(string image, long bytes, string name, string log) => new()
    {
        Metadata = new ContainerMetadata { Name = name },
        Image = new ImageSpec { Image = image },
        Command =
        {
            bytes == 0
                ? ["/bin/busybox", "sh", "-c", "echo ready; i=0; while true; do i=$((i+1)); echo count $i; sleep 0.2; done"]
                : ["/bin/busybox", "awk", $"BEGIN{{s=sprintf(\"%{bytes}s\",\"\"); print \"ready\"; fflush(); system(\"exec /bin/busybox sleep 1000000\")}}"],
        },
        LogPath = log,
        Linux = new LinuxContainerConfig(),
    };

    /// <summary>
    /// Pushes the bench's busybox to <paramref name="registry"/> and returns its name there. Both runtimes pull it from
    /// there, so each checkpoint names an image its restore can find by reference (containerd's restore of an image
    /// imported without a registry fails: it records a bare sha256 ID and then tries to pull that, containerd#12876).
    /// </summary>
    public static async Task<string> PushBusyboxAsync(Crest.TestKit.LocalRegistry registry, string dir)
    {
        var layout = Path.Combine(dir, "busybox-layout");
        PodScenario.WriteBusyboxLayout(layout);
        var image = $"{registry.Host}/crest-bench/busybox:v1";
        await TestImages.PushAsync(layout, "v1", image);
        return image;
    }

    /// <summary>Runs one workload in a fresh pod, checkpoints it (and, for Crest, runs bare runc on it), then restores the archive into a new pod.</summary>
    public static async Task<Sample> RunAsync(RunningSubject subject, string image, string name, long bytes, string work, int n, bool bareRunc)
    {
        using var channel = UnixGrpc.Channel(subject.Socket);
        var rt = new RuntimeService.RuntimeServiceClient(channel);
        var logs = Path.Combine(work, $"logs-{name}-{n}");
        Directory.CreateDirectory(logs);
        PodSandboxConfig Pod(string suffix) => new()
        {
            Metadata = new PodSandboxMetadata { Name = $"cr{n}{suffix}", Uid = $"uid-cr{n}{suffix}", Namespace = "bench", Attempt = 1 },
            Hostname = $"cr{n}",
            LogDirectory = logs,
            Linux = new LinuxPodSandboxConfig(),
        };
        var deadline = DateTime.UtcNow.AddMinutes(10);
        var pod = Pod("a");
        var p = await rt.RunPodSandboxAsync(new RunPodSandboxRequest { Config = pod }, deadline: deadline);
        var c = await rt.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = p.PodSandboxId, Config = Workload(image, bytes, "work", "work.log"), SandboxConfig = pod }, deadline: deadline);
        await rt.StartContainerAsync(new StartContainerRequest { ContainerId = c.ContainerId }, deadline: deadline);
        var log = Path.Combine(logs, "work.log");
        var ready = Stopwatch.StartNew();
        while (!(File.Exists(log) && (await File.ReadAllTextAsync(log)).Contains(" ready", StringComparison.Ordinal)))
        {
            if (ready.Elapsed > TimeSpan.FromMinutes(2))
            {
                throw new TimeoutException($"{name}: the {bytes}-byte workload did not report ready");
            }

            await Task.Delay(100);
        }

        await Task.Delay(500);
        // A process's first dump costs CRIU far more than the next (at 1 GiB on the 2-core VM 1.1-1.3 s frozen against
        // 0.5-0.65 s, whoever dumps it), so each subject checkpoints once untimed and its first frozen time is reported on
        // its own row; the timed dumps, Crest's and bare runc's, are then both second dumps. Before each timed dump the
        // page cache is written back (sync), so neither inherits the other's dirty pages, and the order of Crest and bare
        // runc alternates from run to run.
        var warmup = Path.Combine(work, $"warmup-{n}.tar");
        await rt.CheckpointContainerAsync(new CheckpointContainerRequest { ContainerId = c.ContainerId, Location = warmup, Timeout = 600 }, deadline: deadline);
        var firstFrozen = await FrozenMsAsync(warmup);
        File.Delete(warmup);

        double? bare = null;
        double? bareFrozen = null;
        double? bareRestore = null;
        var runcRoot = $"--root={subject.Dir.Combine("state", "runtime", "runc")}";
        var images = Path.Combine(work, $"runc-{n}");
        async Task BareCheckpointAsync()
        {
            Directory.CreateDirectory(images);
            await SyncAsync();
            var bareClock = Stopwatch.StartNew();
            await RuncAsync(runcRoot, "checkpoint", "--leave-running", "--file-locks", "--image-path", images, "--work-path", images, c.ContainerId);
            bare = bareClock.Elapsed.TotalMilliseconds;
            var bareStats = Path.Combine(images, "stats-dump");
            bareFrozen = File.Exists(bareStats) ? Crest.Checkpoint.Format.CriuStats.ParseDump(await File.ReadAllBytesAsync(bareStats), bareStats).FrozenTimeUs / 1000.0 : null;
        }

        if (bareRunc && n % 2 == 1)
        {
            await BareCheckpointAsync();
        }

        var archive = Path.Combine(work, $"cp-{n}.tar");
        await SyncAsync();
        var clock = Stopwatch.StartNew();
        await rt.CheckpointContainerAsync(new CheckpointContainerRequest { ContainerId = c.ContainerId, Location = archive, Timeout = 600 }, deadline: deadline);
        var checkpointMs = clock.Elapsed.TotalMilliseconds;
        var frozen = await FrozenMsAsync(archive);
        var size = new FileInfo(archive).Length;

        if (bareRunc)
        {
            if (n % 2 == 0)
            {
                await BareCheckpointAsync();
            }

            // The restore floor: the original stops, and runc restores the images into a copy of its bundle (same rootfs,
            // the pod's namespaces, a cgroup of its own), with stdio on /dev/null.
            // Killed through runc, not StopContainer, which unmounts the rootfs that the copy of the bundle uses.
            await RuncAsync(runcRoot, "kill", c.ContainerId, "KILL");
            var exited = Stopwatch.StartNew();
            while ((await rt.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = c.ContainerId }, deadline: deadline)).Status.State != ContainerState.ContainerExited)
            {
                if (exited.Elapsed > TimeSpan.FromSeconds(30))
                {
                    throw new TimeoutException($"{name}: container {c.ContainerId} did not exit within 30 s of SIGKILL");
                }

                await Task.Delay(20);
            }

            var containerDir = subject.Dir.Combine("root", "containers", c.ContainerId);
            var bundle = Path.Combine(work, $"runc-bundle-{n}");
            Directory.CreateDirectory(bundle);
            var spec = System.Text.Json.Nodes.JsonNode.Parse(await File.ReadAllBytesAsync(Path.Combine(containerDir, "bundle", "config.json")))!;
            spec["root"]!["path"] = Path.Combine(containerDir, "rootfs");
            spec["linux"]!["cgroupsPath"] = spec["linux"]!["cgroupsPath"]!.GetValue<string>() + "-bare";
            await File.WriteAllTextAsync(Path.Combine(bundle, "config.json"), spec.ToJsonString());
            var bareId = $"bare-{n}-{c.ContainerId[..12]}";
            clock.Restart();
            await RuncAsync(runcRoot, "restore", "--detach", "--file-locks", "--image-path", images, "--work-path", images, "--bundle", bundle, "--pid-file", Path.Combine(bundle, "pid"), bareId);
            bareRestore = clock.Elapsed.TotalMilliseconds;
            await RuncAsync(runcRoot, "kill", bareId, "KILL");
            await Task.Delay(200);
            await RuncAsync(runcRoot, "delete", "--force", bareId);
            Directory.Delete(images, recursive: true);
        }

        await rt.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = p.PodSandboxId }, deadline: deadline);
        await rt.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = p.PodSandboxId }, deadline: deadline);

        // CreateContainer + StartContainer of the checkpoint in a fresh pod, timed; the pod is removed whatever happened.
        async Task<double?> RestoreAsync(string suffix, string checkpoint, string log, string what)
        {
            var restorePod = Pod(suffix);
            var sandbox = await rt.RunPodSandboxAsync(new RunPodSandboxRequest { Config = restorePod }, deadline: deadline);
            try
            {
                var config = Workload(image, bytes, "work", log);
                config.Image = new ImageSpec { Image = checkpoint };
                clock.Restart();
                var r = await rt.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = sandbox.PodSandboxId, Config = config, SandboxConfig = restorePod }, deadline: deadline);
                await rt.StartContainerAsync(new StartContainerRequest { ContainerId = r.ContainerId }, deadline: deadline);
                return clock.Elapsed.TotalMilliseconds;
            }
            catch (Grpc.Core.RpcException e)
            {
                Console.Error.WriteLine($"bench: {what} on {name} failed: {e.Status.Detail}");
                return null;
            }
            finally
            {
                await rt.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = sandbox.PodSandboxId }, deadline: deadline);
                await rt.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = sandbox.PodSandboxId }, deadline: deadline);
            }
        }

        double? restoreMs;
        string? checkpointImage = null;
        try
        {
            restoreMs = await RestoreAsync("b", archive, "restored.log", "restore");
            // Crest only (bareRunc marks it): the same archive as a local checkpoint image (crest checkpoint-image, untimed),
            // restored below: CRIU then reads the pages where the image's layer holds them. Made after the archive's
            // restore, whose unpacking would otherwise compete with writing back the image's gigabyte.
            if (bareRunc)
            {
                checkpointImage = $"localhost/bench/checkpoint-{n}:v1";
                await CrestCliAsync(subject.Socket, "checkpoint-image", archive, checkpointImage);
            }
        }
        finally
        {
            File.Delete(archive);
        }

        double? imageRestoreMs = null;
        if (checkpointImage is not null)
        {
            try
            {
                imageRestoreMs = await RestoreAsync("c", checkpointImage, "from-image.log", "restore from checkpoint image");
            }
            finally
            {
                await CrestCliAsync(subject.Socket, "rmi", checkpointImage);
            }
        }

        return new Sample(checkpointMs, frozen, size, bare, bareFrozen, restoreMs, bareRestore, imageRestoreMs) { FirstFrozenMs = firstFrozen };
    }

    /// <summary>Runs the crest CLI against <paramref name="socket"/>; a failure throws with its stderr.</summary>
    private static async Task CrestCliAsync(string socket, params string[] args)
    {
        using var crest = Process.Start(new ProcessStartInfo(Subjects.BuiltPath("CrestPath"), ["-r", "unix://" + socket, "-t", "10m", .. args])
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        })!;
        var stdout = crest.StandardOutput.ReadToEndAsync();
        var stderr = await crest.StandardError.ReadToEndAsync();
        await crest.WaitForExitAsync();
        _ = await stdout;
        if (crest.ExitCode != 0)
        {
            throw new InvalidOperationException($"crest {string.Join(' ', args)} failed: {stderr}");
        }
    }

    /// <summary>Writes the page cache back (sync(1)), so that a timed dump starts with nothing dirty.</summary>
    private static async Task SyncAsync()
    {
        using var sync = Process.Start(new ProcessStartInfo("sync") { UseShellExecute = false })!;
        await sync.WaitForExitAsync();
        if (sync.ExitCode != 0)
        {
            throw new InvalidOperationException($"sync exited {sync.ExitCode} before a timed dump");
        }
    }

    /// <summary>Runs runc with stdio on /dev/null (a restored process inherits them as its stdout and stderr).</summary>
    private static async Task RuncAsync(params string[] args)
    {
        var error = Path.GetTempFileName();
        try
        {
            using var runc = Process.Start(new ProcessStartInfo("/bin/sh", ["-c", "exec runc \"$@\" </dev/null >/dev/null 2>\"$0\"", error, .. args]) { UseShellExecute = false })!;
            await runc.WaitForExitAsync();
            if (runc.ExitCode != 0)
            {
                throw new InvalidOperationException($"bare runc {args[1]} failed: {await File.ReadAllTextAsync(error)}");
            }
        }
        finally
        {
            File.Delete(error);
        }
    }

    /// <summary>CRIU's frozen time from the archive's stats-dump.</summary>
    private static async Task<double?> FrozenMsAsync(string archive)
    {
        try
        {
            var metadata = await Crest.Checkpoint.Format.ArchiveMetadataReader.ReadAsync(archive, CancellationToken.None);
            return metadata.Statistics is { } s ? s.FrozenTimeUs / 1000.0 : null;
        }
        catch (Crest.Core.CrestException)
        {
            return null;
        }
    }
}
