using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.RegularExpressions;
using Crest.Core;
using Crest.Linux;

namespace Crest.Checkpoint.Format;

/// <summary>
/// The names of a pod checkpoint directory (docs/pod-checkpoint-format.md). Each container's part is a complete
/// container checkpoint archive, the same bytes CheckpointContainer writes, so checkpointctl reads it as it is.
/// </summary>
public static partial class PodCheckpointFiles
{
    /// <summary>The manifest, written last: a directory without it is not a (complete) pod checkpoint.</summary>
    public const string Manifest = "pod.json";
    public const string ContainersDir = "containers";
    public const string SharedDir = "pod";
    /// <summary>The pod's /dev/shm (POSIX shared memory and anything else its containers put there), as a tar with owners and modes.</summary>
    public const string DevShm = "pod/dev-shm.tar";
    /// <summary>The System V shared memory segments of the pod's IPC namespace (Crest's framing, SysVSharedMemory).</summary>
    public const string SysVShm = "pod/sysv-shm.img";
    public const string Hostname = "pod/hostname";
    public const string Hosts = "pod/hosts";
    public const string ResolvConf = "pod/resolv.conf";

    /// <summary>The version this Crest writes; a reader refuses any other.</summary>
    public const int FormatVersion = 1;

    /// <summary>The image annotation that marks a pod checkpoint OCI image (its one layer holds the directory at /); the value is the format version.</summary>
    public const string ImageAnnotation = "io.crest.checkpoint.pod";

    /// <summary>The image annotation listing the image's container names, comma-separated (informational).</summary>
    public const string ImageContainersAnnotation = "io.crest.checkpoint.pod.containers";

    /// <summary>The manifest annotations of a pod checkpoint OCI image holding the containers <paramref name="names"/>.</summary>
    public static Dictionary<string, string> ImageAnnotations(IEnumerable<string> names) => new(StringComparer.Ordinal)
    {
        [ImageAnnotation] = FormatVersion.ToString(System.Globalization.CultureInfo.InvariantCulture),
        [ImageContainersAnnotation] = string.Join(",", names),
    };

    /// <summary>The value of <see cref="PodCheckpointManifest.Kind"/>.</summary>
    public const string Kind = "crest.pod-checkpoint";

    /// <summary>Where a container's archive is, by its CRI metadata name (the manifest never names paths itself).</summary>
    public static string ContainerArchive(string name) => $"{ContainersDir}/{name}.tar";

    /// <summary>A CRI metadata name usable as a file name: what Kubernetes allows for container names, and no more.</summary>
    public static bool IsValidContainerName(string name) => name.Length is > 0 and <= 253 && NamePattern().IsMatch(name);

    [GeneratedRegex("^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")]
    private static partial Regex NamePattern();
}

/// <summary>pod.json: what a pod checkpoint holds and how it was made.</summary>
public sealed record PodCheckpointManifest
{
    public string Kind { get; init; } = PodCheckpointFiles.Kind;
    public int FormatVersion { get; init; } = PodCheckpointFiles.FormatVersion;
    /// <summary>The engine and its version, for people reading the checkpoint.</summary>
    public string Engine { get; init; } = CheckpointFiles.CrestManager;
    public string EngineVersion { get; init; } = "";
    public required DateTimeOffset CheckpointedAt { get; init; }
    /// <summary>The checkpointed pod sandbox's id, name and config as Crest recorded them (informational at restore: the request's config wins).</summary>
    public required string SandboxId { get; init; }
    public required PodSpec Pod { get; init; }
    public IReadOnlyList<string> Ips { get; init; } = [];
    public string RuntimeHandler { get; init; } = "";
    public required IReadOnlyList<PodCheckpointContainer> Containers { get; init; }
    public PodCheckpointShared Shared { get; init; } = new();
    /// <summary>First freeze to last thaw, in milliseconds.</summary>
    public long FrozenMilliseconds { get; init; }
    /// <summary>CRIU dumped established TCP connections (restore must then put them back the same way).</summary>
    public bool TcpEstablished { get; init; }
    /// <summary>The pod state the checkpoint left behind (running or stopped).</summary>
    public string PostCheckpointState { get; init; } = "running";
}

/// <summary>One container of a pod checkpoint; its archive is <see cref="PodCheckpointFiles.ContainerArchive"/>(<see cref="Name"/>).</summary>
public sealed record PodCheckpointContainer
{
    public required string Name { get; init; }
    public required string Id { get; init; }
    public string Image { get; init; } = "";
    public string ImageRef { get; init; } = "";
    /// <summary>The container's config as Crest recorded it: what `crest restore pod` sends when the caller gives none.</summary>
    public required ContainerSpec Spec { get; init; }
    public long ArchiveBytes { get; init; }
}

/// <summary>The pod's state saved once for all its containers; each file is present only when it was saved.</summary>
public sealed record PodCheckpointShared
{
    public bool DevShm { get; init; }
    public bool SysVShm { get; init; }
    public int SysVShmSegments { get; init; }
    public long DevShmBytes { get; init; }
    public long SysVShmBytes { get; init; }
    public string Hostname { get; init; } = "";
}

/// <summary>Writes and reads pod.json; the reader treats the file as untrusted.</summary>
public static class PodCheckpointManifests
{
    // Generated serialization (crest and crestd are Native AOT binaries); each enum the manifest reaches is written as
    // its camelCase name, so an enum added to PodSpec or ContainerSpec needs its converter here.
    private static readonly PodCheckpointJson Json = new(new JsonSerializerOptions
    {
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        WriteIndented = true,
        Converters =
        {
            new JsonStringEnumConverter<NamespaceMode>(JsonNamingPolicy.CamelCase),
            new JsonStringEnumConverter<SeccompMode>(JsonNamingPolicy.CamelCase),
            new JsonStringEnumConverter<SupplementalGroupsPolicy>(JsonNamingPolicy.CamelCase),
        },
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Skip,
    });

    public static byte[] Serialize(PodCheckpointManifest manifest) => JsonSerializer.SerializeToUtf8Bytes(manifest, Json.PodCheckpointManifest);

    /// <summary>Writes pod.json into <paramref name="dir"/> (0600, flushed to disk): the last file of a pod checkpoint.</summary>
    public static async Task WriteAsync(string dir, PodCheckpointManifest manifest, CancellationToken ct)
    {
        await using var f = new FileStream(Path.Combine(dir, PodCheckpointFiles.Manifest), new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        });
        await f.WriteAsync(Serialize(manifest), ct).ConfigureAwait(false);
        f.Flush(flushToDisk: true);
    }

    /// <summary>Whether <paramref name="dir"/> holds a pod checkpoint (a pod.json), without reading it.</summary>
    public static bool IsPodCheckpoint(string dir) => FileKinds.IsDirectory(dir) && FileKinds.IsRegularFile(Path.Combine(dir, PodCheckpointFiles.Manifest));

    /// <summary>
    /// Reads and checks the manifest of the pod checkpoint in <paramref name="dir"/>: version, kind, container names
    /// (unique, usable as file names) and that every file it announces is a regular file (never a link).
    /// </summary>
    public static async Task<PodCheckpointManifest> ReadAsync(string dir, int maxBytes, CancellationToken ct)
    {
        var path = Path.Combine(dir, PodCheckpointFiles.Manifest);
        if (!FileKinds.IsDirectory(dir))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"pod checkpoint {dir} is not a directory");
        }

        if (!FileKinds.IsRegularFile(path))
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"{dir} is not a pod checkpoint: it has no {PodCheckpointFiles.Manifest} (an interrupted CheckpointPod leaves none; check the path or checkpoint the pod again)");
        }

        byte[] bytes;
        await using (var f = new FileStream(FileKinds.OpenReadNoFollow(path), FileAccess.Read))
        {
            if (f.Length > maxBytes)
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"{path} is {f.Length} bytes, more than the {maxBytes} a manifest may have");
            }

            bytes = new byte[f.Length];
            await f.ReadExactlyAsync(bytes, ct).ConfigureAwait(false);
        }

        return Parse(bytes, dir);
    }

    /// <summary>Parses and checks a manifest's bytes; <paramref name="dir"/> (null: not checked) is where its files must be.</summary>
    public static PodCheckpointManifest Parse(ReadOnlySpan<byte> bytes, string? dir)
    {
        var where = dir is null ? PodCheckpointFiles.Manifest : Path.Combine(dir, PodCheckpointFiles.Manifest);
        PodCheckpointManifest? manifest;
        try
        {
            using var doc = JsonDocument.Parse(bytes.ToArray());
            var version = doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("formatVersion", out var v) && v.ValueKind == JsonValueKind.Number ? v.GetInt32() : 0;
            if (version != PodCheckpointFiles.FormatVersion)
            {
                throw new CrestException(ErrorKind.InvalidArgument,
                    $"{where} has format version {version}; this Crest reads version {PodCheckpointFiles.FormatVersion} (a newer Crest wrote it? restore it there)");
            }

            manifest = doc.Deserialize(Json.PodCheckpointManifest);
        }
        catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"{where} is not a valid pod checkpoint manifest: {e.Message}", e);
        }

        if (manifest is null || manifest.Kind != PodCheckpointFiles.Kind)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"{where} is not a pod checkpoint manifest (kind is not {PodCheckpointFiles.Kind})");
        }

        if (manifest.Containers is null || manifest.Containers.Count == 0)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"{where} lists no containers");
        }

        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var c in manifest.Containers)
        {
            if (c?.Name is not { } name || !PodCheckpointFiles.IsValidContainerName(name))
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"{where} has a container named \"{c?.Name}\", which is not a valid container name");
            }

            if (!names.Add(name))
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"{where} lists container {name} twice");
            }

            if (c.Spec is null)
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"{where}: container {name} has no recorded config");
            }

            if (dir is not null && !FileKinds.IsRegularFile(Path.Combine(dir, PodCheckpointFiles.ContainerArchive(name))))
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"pod checkpoint {dir} lacks {PodCheckpointFiles.ContainerArchive(name)} (or it is not a regular file)");
            }
        }

        if (manifest.Pod is null)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"{where} has no pod config");
        }

        if (dir is not null)
        {
            foreach (var (present, file) in new[] { (manifest.Shared.DevShm, PodCheckpointFiles.DevShm), (manifest.Shared.SysVShm, PodCheckpointFiles.SysVShm) })
            {
                if (present && !FileKinds.IsRegularFile(Path.Combine(dir, file)))
                {
                    throw new CrestException(ErrorKind.InvalidArgument, $"pod checkpoint {dir} announces {file} but lacks it (or it is not a regular file)");
                }
            }
        }

        return manifest;
    }
}

[JsonSerializable(typeof(PodCheckpointManifest))]
internal sealed partial class PodCheckpointJson : JsonSerializerContext;
