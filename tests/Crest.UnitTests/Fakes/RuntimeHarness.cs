using System.Formats.Tar;
using Crest.Core;
using Crest.Images;
using Crest.Oci;
using Crest.Runtime;
using Crest.TestKit;
using Microsoft.Extensions.Logging.Abstractions;

namespace Crest.UnitTests.Fakes;

/// <summary>
/// The runtime's domain services on fakes only: an in-memory store, a recording <see cref="Crest.Linux.ILinux"/>, a
/// fake OCI runtime and network, and a real <see cref="ImageService"/> over in-memory content and metadata with
/// one imported image. Files go to a temp directory; nothing needs root and each test runs in milliseconds.
/// </summary>
internal sealed class RuntimeHarness : IDisposable
{
    public const string Image = "localhost/unit/busybox:latest";

    private readonly TempDir _dir = new();

    /// <param name="lazyPages">The post-copy daemons StartContainer runs (a stand-in criu); none by default.</param>
    /// <param name="registry">The registry the image service pulls from and pushes to; none (every call refused) by default.</param>
    public RuntimeHarness(LazyPageTransfers? lazyPages = null, IRegistryClient? registry = null)
    {
        Paths = new CrestPaths(_dir.Combine("root"), _dir.Combine("state"), _dir.Combine("state/crest.sock"));
        Layout = new RuntimeLayout(Paths);
        Runtimes = new FakeOciRuntimes(Layout.ExitDir, Linux.Alive, "runc", "crun");
        Images = new ImageService(Content, new OverlaySnapshotter(_dir.Combine("snapshots"), ImageMetadata, TimeProvider.System), ImageMetadata,
            registry ?? new NoRegistry(), ImageServiceOptions.Default, TimeProvider.System, NullLogger<ImageService>.Instance);
        Exits = new ConmonExits(Layout, TimeProvider.System);
        Reaper = new DirectoryReaper(Paths, Linux, NullLogger<DirectoryReaper>.Instance);
        Sandboxes = new SandboxService(Store, Linux, Runtimes, Network, Layout, new UserNamespaces(Paths, NullLogger<UserNamespaces>.Instance), Exits,
            TimeProvider.System, NullLogger<SandboxService>.Instance);
        Containers = new ContainerService(Store, Sandboxes, new ContainerBundles(Layout, Images, ImageMetadata, Linux, RestoreSteps, Reaper), Runtimes, Linux,
            new RuntimeEvents(TimeProvider.System), Exits, TimeProvider.System, NullLogger<ContainerService>.Instance, lazyPages);
        Pods = new PodService(Sandboxes, Containers);
    }

    public CrestPaths Paths { get; }

    /// <summary>The watch on conmon's exit directory, where the fake runtime writes exits as conmon does.</summary>
    public ConmonExits Exits { get; }

    public RuntimeLayout Layout { get; }

    /// <summary>Deletes removed containers' directories in the background; tests wait on <see cref="DirectoryReaper.IdleAsync"/>.</summary>
    public DirectoryReaper Reaper { get; }

    public MemoryRuntimeStore Store { get; } = new();

    public RecordingLinux Linux { get; } = new();

    public FakeOciRuntimes Runtimes { get; }

    public FakeNetwork Network { get; } = new();

    public MemoryImageMetadataStore ImageMetadata { get; } = new();

    public FakeRestoreSteps RestoreSteps { get; } = new();

    public ImageService Images { get; }

    /// <summary>The image service's blobs.</summary>
    public MemoryContentStore Content { get; } = new();

    public SandboxService Sandboxes { get; }

    public ContainerService Containers { get; }

    public PodService Pods { get; }

    public static PodSpec Pod(string name = "web") => new() { Name = name, Uid = "uid-" + name, Namespace = "default" };

    public static ContainerSpec Container(string name = "app") => new() { Name = name, Image = Image, Command = ["/bin/sh"] };

    /// <summary>Imports the one-layer image every container here is made from.</summary>
    public async Task ImportImageAsync(CancellationToken ct)
    {
        var tar = _dir.Combine("rootfs.tar");
        await using (var file = File.Create(tar))
        await using (var writer = new TarWriter(file))
        {
            var entry = new PaxTarEntry(TarEntryType.RegularFile, "bin/sh") { DataStream = new MemoryStream("#!"u8.ToArray()) };
            await writer.WriteEntryAsync(entry, ct);
        }

        await Images.ImportRootfsAsync(tar, Image, ct);
    }

    /// <summary>A restore plan as the checkpoint layer hands it over: the checkpoint unpacked into a private staging directory.</summary>
    public async Task<RestorePlan> StagedRestorePlanAsync(bool complete, CancellationToken ct)
    {
        var staging = Path.Combine(Paths.Root, "restores", "r1");
        Directory.CreateDirectory(Path.Combine(staging, "checkpoint"));
        if (complete)
        {
            await File.WriteAllBytesAsync(Path.Combine(staging, "checkpoint", "inventory.img"), [1, 2, 3], ct);
        }

        return new RestorePlan
        {
            Engine = CheckpointEngine.Crest,
            SourceKind = CheckpointSourceKind.Archive,
            Source = "/var/lib/checkpoints/app.tar",
            OriginalName = "app",
            OriginalRuntime = "runc",
            Annotations = new Dictionary<string, string>(),
            Labels = new Dictionary<string, string>(),
            CheckpointedAt = DateTimeOffset.UnixEpoch,
            StagingDir = staging,
        };
    }

    /// <summary>A ready pod with the image imported: where most container tests start.</summary>
    public async Task<SandboxRecord> ReadyPodAsync(CancellationToken ct)
    {
        await ImportImageAsync(ct);
        return await Sandboxes.RunAsync(Pod(), ct);
    }

    /// <summary>Puts a running container on record as crestd would have left it, its conmon alive, and the runtime knowing it.</summary>
    public async Task<ContainerRecord> RecordRunningAsync(string id, string sandboxId, CancellationToken ct)
    {
        var c = RuntimeStoreConformance.Container(id, sandboxId, ContainerState.Running) with { Pid = 4242, StartedAt = DateTimeOffset.UtcNow };
        await Store.PutContainerAsync(c, ct);
        var bundle = Layout.Container(id);
        Directory.CreateDirectory(bundle.StateDir);
        await File.WriteAllTextAsync(bundle.ConmonPidFile, Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture), ct);
        Runtimes.Know(id, "running", 4242);
        return c;
    }

    public void Dispose()
    {
        Exits.Dispose();
        Reaper.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _dir.Dispose();
    }

    /// <summary>No registry: CreateContainer never pulls, and these tests never push.</summary>
    private sealed class NoRegistry : IRegistryClient
    {
        public Task<FetchedManifest> GetManifestAsync(ImageReference image, string reference, RegistryCredentials? credentials, CancellationToken ct) => throw new NotSupportedException();

        public Task<Stream> GetBlobAsync(ImageReference image, Digest digest, RegistryCredentials? credentials, CancellationToken ct) => throw new NotSupportedException();

        public Task<bool> BlobExistsAsync(ImageReference image, Digest digest, RegistryCredentials? credentials, CancellationToken ct) => throw new NotSupportedException();

        public Task PushBlobAsync(ImageReference image, Digest digest, long size, Func<Stream> open, RegistryCredentials? credentials, CancellationToken ct) => throw new NotSupportedException();

        public Task PushManifestAsync(ImageReference image, string reference, byte[] content, string mediaType, RegistryCredentials? credentials, CancellationToken ct) => throw new NotSupportedException();
    }
}

/// <summary>The checkpoint layer's restore steps, recorded: what StartContainer of a restored container asked of it.</summary>
internal sealed class FakeRestoreSteps : IRestoreSteps
{
    public List<string> Applied { get; } = [];

    public Exception? Failure { get; set; }

    public Task ApplyRootfsAsync(string restoreDir, string rootfs, ContainerRecord container, CancellationToken ct)
    {
        Applied.Add(container.Id);
        return Failure is null ? Task.CompletedTask : Task.FromException(Failure);
    }

    public List<string> Finished { get; } = [];

    public Task RestoreFinishedAsync(ContainerRecord container, SandboxRecord sandbox, CancellationToken ct)
    {
        Finished.Add(container.Id);
        return Task.CompletedTask;
    }
}
