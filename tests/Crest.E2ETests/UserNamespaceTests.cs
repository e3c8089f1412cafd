using System.Formats.Tar;
using Crest.Linux;
using Crest.TestKit;
using Grpc.Core;
using Runtime.V1;

namespace Crest.E2ETests;

/// <summary>
/// Pods with a user namespace of their own (CRI userns_options mode POD), through crestd as a process and the raw CRI:
/// the container sees the pod's mapping, the image's root-owned files as its root's, can write its rootfs and /etc/hosts,
/// and leaves no mount behind. Wrong requests are refused before anything is made.
/// </summary>
public class UserNamespaceTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static readonly IDMapping[] PodMapping = [new IDMapping { ContainerId = 0, HostId = 1000, Length = 100000 }];

    [Theory]
    [InlineData("runc")]
    [InlineData("crun")]
    public async Task A_container_in_a_user_namespaced_pod_sees_the_mapping_and_owns_the_image_files(string handler)
    {
        Requires.Root();
        Requires.Binary("conmon");
        Requires.Handler(handler);
        using var dir = new TempDir("crest-e2e");
        // The pod's root is an unmapped "other" on the host: it must be able to reach the root filesystems.
        File.SetUnixFileMode(dir.Path, (UnixFileMode)0x1C9 /* 0711 */);
        await using var crestd = await CrestdProcess.StartReadyAsync(dir);
        await ImportBusyboxAsync(dir, crestd);
        using var channel = UnixGrpc.Channel(crestd.Socket);
        var cri = new RuntimeService.RuntimeServiceClient(channel);

        var status = await cri.StatusAsync(new StatusRequest(), cancellationToken: Ct);
        Assert.True(status.RuntimeHandlers.Where(h => h.Name is "" or "runc" or "crun").All(h => h.Features.UserNamespaces),
            "user namespaces not announced: " + status.RuntimeHandlers + "\n" + crestd.Log);

        var namespaces = new NamespaceOption { UsernsOptions = new UserNamespace { Mode = NamespaceMode.Pod, Uids = { PodMapping }, Gids = { PodMapping } } };
        var podConfig = new PodSandboxConfig
        {
            Metadata = new PodSandboxMetadata { Name = "userns-" + handler, Uid = "uid-userns-" + handler, Namespace = "e2e", Attempt = 1 },
            LogDirectory = dir.CreateDirectory("logs"),
            Linux = new LinuxPodSandboxConfig { SecurityContext = new LinuxSandboxSecurityContext { NamespaceOptions = namespaces } },
        };
        string? podId = null;
        try
        {
            podId = (await cri.RunPodSandboxAsync(new RunPodSandboxRequest { Config = podConfig, RuntimeHandler = handler }, cancellationToken: Ct)).PodSandboxId;
            var podStatus = (await cri.PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = podId }, cancellationToken: Ct)).Status;
            Assert.Equal(namespaces.UsernsOptions, podStatus.Linux.Namespaces.Options.UsernsOptions);
            var container = new ContainerConfig
            {
                Metadata = new ContainerMetadata { Name = "probe" },
                Image = new ImageSpec { Image = "localhost/e2e/busybox:v1" },
                Command =
                {
                    "/bin/busybox", "sh", "-c",
                    "cat /proc/self/uid_map; cat /proc/self/gid_map; /bin/busybox stat -c 'owner %u:%g %n' / /bin/busybox /etc/hosts /dev/shm; "
                    + "echo written > /written && /bin/busybox stat -c 'owner %u:%g %n' /written; echo '10.9.9.9 extra' >> /etc/hosts && echo hosts-writable; "
                    + "/bin/busybox ls /sys/class/net",
                },
                LogPath = "probe.log",
                Linux = new LinuxContainerConfig { SecurityContext = new LinuxContainerSecurityContext { NamespaceOptions = namespaces } },
            };
            var id = (await cri.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = podId, Config = container, SandboxConfig = podConfig }, cancellationToken: Ct)).ContainerId;
            await cri.StartContainerAsync(new StartContainerRequest { ContainerId = id }, cancellationToken: Ct);
            var s = await Eventually.LastAsync(
                async () => (await cri.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = id }, cancellationToken: Ct)).Status,
                st => st.State == ContainerState.ContainerExited, TimeSpan.FromSeconds(30), Ct);

            var log = await File.ReadAllTextAsync(dir.Combine("logs", "probe.log"), Ct);
            Assert.True(s.State == ContainerState.ContainerExited && s.ExitCode == 0, $"{s.State} {s.ExitCode} {s.Message}\n{log}\n{crestd.Log}");
            Assert.Matches(@"stdout F\s+0\s+1000\s+100000\n(.*\n)*.*stdout F\s+0\s+1000\s+100000\n", log);
            foreach (var path in new[] { "/", "/bin/busybox", "/etc/hosts", "/dev/shm", "/written" })
            {
                Assert.Contains($"owner 0:0 {path}\n", log, StringComparison.Ordinal);
            }

            Assert.Contains("hosts-writable", log, StringComparison.Ordinal);
            // sysfs in the pod's own network namespace: only its interfaces.
            Assert.Contains("stdout F eth0\n", log, StringComparison.Ordinal);
            Assert.Contains("stdout F lo\n", log, StringComparison.Ordinal);
            // What the pod wrote belongs to the mapped root on the host.
            var written = Directory.EnumerateDirectories(dir.Combine("root", "containers")).Select(c => Path.Combine(c, "upper", "written")).Single(File.Exists);
            Assert.Equal("1000", (await RunAsync("stat", "-c", "%u", written)).Trim());

            // A restore refuses checkpoints that hold a user namespace: the checkpoint is refused before any pause.
            var sleeper = container.Clone();
            sleeper.Metadata.Name = "sleeper";
            sleeper.Command.Clear();
            sleeper.Command.Add(["/bin/busybox", "sleep", "60"]);
            var sleeperId = (await cri.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = podId, Config = sleeper, SandboxConfig = podConfig }, cancellationToken: Ct)).ContainerId;
            await cri.StartContainerAsync(new StartContainerRequest { ContainerId = sleeperId }, cancellationToken: Ct);
            var archive = dir.Combine("userns.tar");
            var refused = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => cri.CheckpointContainerAsync(
                new CheckpointContainerRequest { ContainerId = sleeperId, Location = archive }, cancellationToken: Ct).ResponseAsync);
            Assert.Equal(Grpc.Core.StatusCode.FailedPrecondition, refused.StatusCode);
            Assert.Contains("own user namespace", refused.Status.Detail, StringComparison.Ordinal);
            Assert.False(File.Exists(archive));
            Assert.Equal(ContainerState.ContainerRunning, (await cri.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = sleeperId }, cancellationToken: Ct)).Status.State);
        }
        finally
        {
            if (podId is not null)
            {
                await cri.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = podId }, cancellationToken: CancellationToken.None);
                await cri.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = podId }, cancellationToken: CancellationToken.None);
            }
        }

        var linux = new LinuxSyscalls();
        Assert.Empty(linux.MountsUnder(dir.Combine("root")));
        Assert.Empty(linux.MountsUnder(dir.Combine("state")));
    }

    [Fact]
    public async Task Wrong_user_namespace_requests_are_refused_as_invalid_arguments()
    {
        Requires.Root();
        Requires.Binary("conmon");
        using var dir = new TempDir("crest-e2e");
        File.SetUnixFileMode(dir.Path, (UnixFileMode)0x1C9 /* 0711 */);
        await using var crestd = await CrestdProcess.StartReadyAsync(dir);
        using var channel = UnixGrpc.Channel(crestd.Socket);
        var cri = new RuntimeService.RuntimeServiceClient(channel);
        var two = new[] { PodMapping[0], new IDMapping { ContainerId = 0, HostId = 2000, Length = 100000 } };
        var shifted = new[] { new IDMapping { ContainerId = 1, HostId = 1000, Length = 100000 } };
        var cases = new (string Name, UserNamespace Userns, string Expected)[]
        {
            ("two-mappings", new UserNamespace { Mode = NamespaceMode.Pod, Uids = { two }, Gids = { two } }, "exactly one is expected"),
            ("container-id-1", new UserNamespace { Mode = NamespaceMode.Pod, Uids = { shifted }, Gids = { shifted } }, "must start at 0"),
            ("mode-container", new UserNamespace { Mode = NamespaceMode.Container }, "mode CONTAINER"),
            ("mode-target", new UserNamespace { Mode = NamespaceMode.Target }, "mode TARGET"),
            ("node-with-mappings", new UserNamespace { Mode = NamespaceMode.Node, Uids = { PodMapping }, Gids = { PodMapping } }, "mappings go only with mode POD"),
        };

        foreach (var (name, userns, expected) in cases)
        {
            var config = new PodSandboxConfig
            {
                Metadata = new PodSandboxMetadata { Name = name, Uid = "uid-" + name, Namespace = "e2e" },
                Linux = new LinuxPodSandboxConfig { SecurityContext = new LinuxSandboxSecurityContext { NamespaceOptions = new NamespaceOption { UsernsOptions = userns } } },
            };
            var e = await Assert.ThrowsAsync<RpcException>(async () => await cri.RunPodSandboxAsync(new RunPodSandboxRequest { Config = config }, cancellationToken: Ct));
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.Contains(expected, e.Status.Detail, StringComparison.Ordinal);
        }

        Assert.Empty((await cri.ListPodSandboxAsync(new ListPodSandboxRequest(), cancellationToken: Ct)).Items);
    }

    private static async Task ImportBusyboxAsync(TempDir dir, CrestdProcess crestd)
    {
        var rootfs = dir.Combine("rootfs.tar");
        await using (var f = File.Create(rootfs))
        await using (var t = new TarWriter(f, TarEntryFormat.Pax))
        {
            TestImages.Dir(t, "etc");
            TestImages.BusyboxRootfs(t);
        }

        var import = await Binaries.RunCrestAsync(["-r", crestd.Endpoint, "image", "import", rootfs, "localhost/e2e/busybox:v1"]);
        Assert.True(import.ExitCode == 0, import.Stderr);
    }

    private static async Task<string> RunAsync(string program, params string[] args)
    {
        using var p = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo(program, args) { RedirectStandardOutput = true, UseShellExecute = false })!;
        var output = await p.StandardOutput.ReadToEndAsync(Ct);
        await p.WaitForExitAsync(Ct);
        return output;
    }
}
