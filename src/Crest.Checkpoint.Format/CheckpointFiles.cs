using System.Text.Json.Serialization;

namespace Crest.Checkpoint.Format;

/// <summary>The file names of a checkpoint archive, as checkpointctl's lib defines them and containerd, CRI-O and Podman write them.</summary>
public static class CheckpointFiles
{
    public const string ConfigDump = "config.dump";
    public const string SpecDump = "spec.dump";
    public const string StatusDump = "status.dump";
    public const string CriuImages = "checkpoint";
    public const string RootfsDiff = "rootfs-diff.tar";
    public const string DeletedFiles = "deleted.files";
    public const string BindMounts = "bind.mounts";
    public const string ContainerLog = "container.log";
    /// <summary>CRI-O names its log copy after the annotation key.</summary>
    public const string CrioLog = "io.kubernetes.cri-o.LogPath";
    /// <summary>Podman's log copy.</summary>
    public const string PodmanLog = "ctr.log";
    public const string StatsDump = "stats-dump";
    public const string DumpLog = "dump.log";
    public const string RestoreLog = "restore.log";
    public const string NetworkStatus = "network.status";

    /// <summary>
    /// Crest's own mark on a live migration's frozen checkpoint whose rootfs-diff.tar holds only what changed since the
    /// rootfs rounds staged on the target before the freeze (<see cref="RootfsRoundsRecord"/>). Absent from every other
    /// checkpoint: an archive without it is complete, as every engine writes it.
    /// </summary>
    public const string RootfsRounds = "crest-rootfs-rounds.json";

    /// <summary>
    /// Where a migration target's restore keeps the staged rounds it applies before the archive's rootfs-diff.tar: made by
    /// the target itself, never taken from an archive.
    /// </summary>
    public const string StagedRootfsRounds = "crest-staged-rootfs";

    /// <summary>
    /// Whether <paramref name="name"/> (normalised, relative to the checkpoint's root) is one of CRIU's page images,
    /// <c>checkpoint/pages-N.img</c>: the memory itself, most of a checkpoint's bytes.
    /// </summary>
    public static bool IsPageImage(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        const string prefix = CriuImages + "/pages-";
        if (!name.StartsWith(prefix, StringComparison.Ordinal) || !name.EndsWith(".img", StringComparison.Ordinal) || name.Length <= prefix.Length + 4)
        {
            return false;
        }

        return !name.AsSpan(prefix.Length, name.Length - prefix.Length - 4).ContainsAnyExceptInRange('0', '9');
    }

    /// <summary>The spec.dump annotation checkpointctl uses to tell engines apart.</summary>
    public const string ContainerManagerAnnotation = "io.container.manager";

    /// <summary>Crest's value of <see cref="ContainerManagerAnnotation"/>.</summary>
    public const string CrestManager = "crest";

    /// <summary>The small metadata files a restore reads before it unpacks anything else.</summary>
    public static readonly IReadOnlySet<string> Metadata = new HashSet<string>(StringComparer.Ordinal)
    {
        ConfigDump, SpecDump, StatusDump, BindMounts, DeletedFiles, NetworkStatus, RootfsRounds,
    };
}

/// <summary>config.dump: checkpointctl's ContainerConfig (Go JSON, so zero times are written as 0001-01-01T00:00:00Z).</summary>
public sealed record ConfigDump
{
    [JsonPropertyName("id")] public string Id { get; init; } = "";
    [JsonPropertyName("name")] public string Name { get; init; } = "";
    [JsonPropertyName("rootfsImage")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? RootfsImage { get; init; }
    [JsonPropertyName("rootfsImageRef")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? RootfsImageRef { get; init; }
    [JsonPropertyName("rootfsImageName")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? RootfsImageName { get; init; }
    [JsonPropertyName("runtime")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? Runtime { get; init; }
    [JsonPropertyName("createdTime")] [JsonConverter(typeof(GoTimeConverter))] public DateTimeOffset CreatedTime { get; init; }
    [JsonPropertyName("checkpointedTime")] [JsonConverter(typeof(GoTimeConverter))] public DateTimeOffset CheckpointedTime { get; init; }
    [JsonPropertyName("restoredTime")] [JsonConverter(typeof(GoTimeConverter))] public DateTimeOffset RestoredTime { get; init; }
    [JsonPropertyName("restored")] public bool Restored { get; init; }
}

/// <summary>Times as Go's encoding/json writes them (RFC 3339 in UTC with a Z, trailing zeros of the fraction dropped); any RFC 3339 time is read.</summary>
public sealed class GoTimeConverter : JsonConverter<DateTimeOffset>
{
    public override DateTimeOffset Read(ref System.Text.Json.Utf8JsonReader reader, Type typeToConvert, System.Text.Json.JsonSerializerOptions options) =>
        reader.GetDateTimeOffset();

    public override void Write(System.Text.Json.Utf8JsonWriter writer, DateTimeOffset value, System.Text.Json.JsonSerializerOptions options)
    {
        ArgumentNullException.ThrowIfNull(writer);
        writer.WriteStringValue(value.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.FFFFFFF'Z'", System.Globalization.CultureInfo.InvariantCulture));
    }
}

/// <summary>One entry of CRI-O's bind.mounts.</summary>
public sealed record BindMountDump
{
    [JsonPropertyName("source")] public string Source { get; init; } = "";
    [JsonPropertyName("destination")] public string Destination { get; init; } = "";
    [JsonPropertyName("file_type")] public string FileType { get; init; } = "directory";
    [JsonPropertyName("permissions")] public uint Permissions { get; init; }
}

/// <summary>status.dump: the CRI ContainerStatus as containerd's Go code marshals it (snake_case, enums and times as numbers).</summary>
public sealed record StatusDump
{
    [JsonPropertyName("id")] public string Id { get; init; } = "";
    [JsonPropertyName("metadata")] public StatusMetadata? Metadata { get; init; }
    [JsonPropertyName("state")] public int State { get; init; }
    [JsonPropertyName("created_at")] public long CreatedAt { get; init; }
    [JsonPropertyName("started_at")] public long StartedAt { get; init; }
    [JsonPropertyName("image")] public StatusImage? Image { get; init; }
    [JsonPropertyName("image_ref")] public string ImageRef { get; init; } = "";
    [JsonPropertyName("labels")] public IReadOnlyDictionary<string, string>? Labels { get; init; }
    [JsonPropertyName("annotations")] public IReadOnlyDictionary<string, string>? Annotations { get; init; }
    [JsonPropertyName("mounts")] public IReadOnlyList<StatusMount>? Mounts { get; init; }
    [JsonPropertyName("log_path")] public string LogPath { get; init; } = "";
    [JsonPropertyName("image_id")] public string ImageId { get; init; } = "";
}

public sealed record StatusMetadata
{
    [JsonPropertyName("name")] public string Name { get; init; } = "";
    [JsonPropertyName("attempt")] public uint Attempt { get; init; }
}

public sealed record StatusImage
{
    [JsonPropertyName("image")] public string Image { get; init; } = "";
    [JsonPropertyName("user_specified_image")] [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? UserSpecifiedImage { get; init; }
}

public sealed record StatusMount
{
    [JsonPropertyName("container_path")] public string ContainerPath { get; init; } = "";
    [JsonPropertyName("host_path")] public string HostPath { get; init; } = "";
    [JsonPropertyName("readonly")] public bool ReadOnly { get; init; }
}

/// <summary>crest-rootfs-rounds.json: the rounds a frozen delta sits on, each by the SHA-256 of its tar, in the order they were sent.</summary>
public sealed record RootfsRoundsRecord
{
    [JsonPropertyName("rounds")] public List<string> Rounds { get; init; } = [];
}

[JsonSourceGenerationOptions(WriteIndented = false)]
[JsonSerializable(typeof(RootfsRoundsRecord))]
[JsonSerializable(typeof(ConfigDump))]
[JsonSerializable(typeof(StatusDump))]
[JsonSerializable(typeof(List<BindMountDump>))]
[JsonSerializable(typeof(List<string>))]
[JsonSerializable(typeof(Dictionary<string, string>))]
public sealed partial class CheckpointJson : JsonSerializerContext;
