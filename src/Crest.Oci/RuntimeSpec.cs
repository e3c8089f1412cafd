using System.Text.Json;
using System.Text.Json.Serialization;

namespace Crest.Oci;

/// <summary>The OCI runtime spec (config.json) fields Crest writes; see opencontainers/runtime-spec config.md.</summary>
public sealed record RuntimeSpec
{
    [JsonPropertyName("ociVersion")] public string OciVersion { get; init; } = "1.1.0";
    [JsonPropertyName("process")] public SpecProcess Process { get; init; } = new();
    [JsonPropertyName("root")] public SpecRoot Root { get; init; } = new();
    [JsonPropertyName("hostname")] public string? Hostname { get; init; }
    [JsonPropertyName("mounts")] public IReadOnlyList<SpecMount> Mounts { get; init; } = [];
    [JsonPropertyName("linux")] public SpecLinux Linux { get; init; } = new();
    [JsonPropertyName("annotations")] public IReadOnlyDictionary<string, string>? Annotations { get; init; }
}

public sealed record SpecProcess
{
    [JsonPropertyName("terminal")] public bool Terminal { get; init; }
    [JsonPropertyName("user")] public SpecUser User { get; init; } = new();
    [JsonPropertyName("args")] public IReadOnlyList<string> Args { get; init; } = [];
    [JsonPropertyName("env")] public IReadOnlyList<string> Env { get; init; } = [];
    [JsonPropertyName("cwd")] public string Cwd { get; init; } = "/";
    [JsonPropertyName("capabilities")] public SpecCapabilities? Capabilities { get; init; }
    [JsonPropertyName("noNewPrivileges")] public bool NoNewPrivileges { get; init; }
    [JsonPropertyName("oomScoreAdj")] public int? OomScoreAdj { get; init; }
}

public sealed record SpecUser
{
    [JsonPropertyName("uid")] public uint Uid { get; init; }
    [JsonPropertyName("gid")] public uint Gid { get; init; }
    [JsonPropertyName("additionalGids")] public IReadOnlyList<uint>? AdditionalGids { get; init; }
}

public sealed record SpecCapabilities
{
    [JsonPropertyName("bounding")] public IReadOnlyList<string> Bounding { get; init; } = [];
    [JsonPropertyName("effective")] public IReadOnlyList<string> Effective { get; init; } = [];
    [JsonPropertyName("permitted")] public IReadOnlyList<string> Permitted { get; init; } = [];
}

public sealed record SpecRoot
{
    [JsonPropertyName("path")] public string Path { get; init; } = "rootfs";
    [JsonPropertyName("readonly")] public bool ReadOnly { get; init; }
}

public sealed record SpecMount
{
    [JsonPropertyName("destination")] public required string Destination { get; init; }
    [JsonPropertyName("type")] public string? Type { get; init; }
    [JsonPropertyName("source")] public string? Source { get; init; }
    [JsonPropertyName("options")] public IReadOnlyList<string>? Options { get; init; }
}

public sealed record SpecLinux
{
    [JsonPropertyName("namespaces")] public IReadOnlyList<SpecNamespace> Namespaces { get; init; } = [];
    [JsonPropertyName("resources")] public SpecResources? Resources { get; init; }
    [JsonPropertyName("cgroupsPath")] public string? CgroupsPath { get; init; }
    [JsonPropertyName("sysctl")] public IReadOnlyDictionary<string, string>? Sysctl { get; init; }
    [JsonPropertyName("maskedPaths")] public IReadOnlyList<string>? MaskedPaths { get; init; }
    [JsonPropertyName("readonlyPaths")] public IReadOnlyList<string>? ReadonlyPaths { get; init; }
    [JsonPropertyName("seccomp")] public SpecSeccomp? Seccomp { get; init; }
    [JsonPropertyName("devices")] public IReadOnlyList<SpecDevice>? Devices { get; init; }
    [JsonPropertyName("uidMappings")] public IReadOnlyList<SpecIdMapping>? UidMappings { get; init; }
    [JsonPropertyName("gidMappings")] public IReadOnlyList<SpecIdMapping>? GidMappings { get; init; }

    /// <summary>Propagation of the container's root mount ("rshared", "rslave", "rprivate"); unset, the runtime's default.</summary>
    [JsonPropertyName("rootfsPropagation")] public string? RootfsPropagation { get; init; }
}

/// <summary>One range of a new user namespace's uid or gid map.</summary>
public sealed record SpecIdMapping(
    [property: JsonPropertyName("containerID")] uint ContainerId,
    [property: JsonPropertyName("hostID")] uint HostId,
    [property: JsonPropertyName("size")] uint Size);

public sealed record SpecNamespace(
    [property: JsonPropertyName("type")] string Type,
    [property: JsonPropertyName("path")] string? Path = null);

public sealed record SpecResources
{
    [JsonPropertyName("devices")] public IReadOnlyList<SpecDeviceRule>? Devices { get; init; }
    [JsonPropertyName("memory")] public SpecMemory? Memory { get; init; }
    [JsonPropertyName("cpu")] public SpecCpu? Cpu { get; init; }
}

public sealed record SpecDeviceRule(
    [property: JsonPropertyName("allow")] bool Allow,
    [property: JsonPropertyName("access")] string Access,
    [property: JsonPropertyName("type")] string? Type = null,
    [property: JsonPropertyName("major")] long? Major = null,
    [property: JsonPropertyName("minor")] long? Minor = null);

public sealed record SpecMemory([property: JsonPropertyName("limit")] long? Limit);

public sealed record SpecCpu
{
    [JsonPropertyName("shares")] public ulong? Shares { get; init; }
    [JsonPropertyName("quota")] public long? Quota { get; init; }
    [JsonPropertyName("period")] public ulong? Period { get; init; }
    [JsonPropertyName("cpus")] public string? Cpus { get; init; }
    [JsonPropertyName("mems")] public string? Mems { get; init; }
}

public sealed record SpecDevice
{
    [JsonPropertyName("path")] public required string Path { get; init; }
    [JsonPropertyName("type")] public required string Type { get; init; }
    [JsonPropertyName("major")] public long Major { get; init; }
    [JsonPropertyName("minor")] public long Minor { get; init; }
    [JsonPropertyName("fileMode")] public uint? FileMode { get; init; }
    [JsonPropertyName("uid")] public uint? Uid { get; init; }
    [JsonPropertyName("gid")] public uint? Gid { get; init; }

    /// <summary>Cgroup access (r, w, m) the container gets to this device; not part of the spec's device entry.</summary>
    [JsonIgnore] public string Permissions { get; init; } = "rwm";
}

public sealed record SpecSeccomp
{
    [JsonPropertyName("defaultAction")] public string DefaultAction { get; init; } = "SCMP_ACT_ALLOW";
    [JsonPropertyName("architectures")] public IReadOnlyList<string>? Architectures { get; init; }
    [JsonPropertyName("syscalls")] public IReadOnlyList<SpecSyscall>? Syscalls { get; init; }
}

public sealed record SpecSyscall
{
    [JsonPropertyName("names")] public IReadOnlyList<string> Names { get; init; } = [];
    [JsonPropertyName("action")] public string Action { get; init; } = "SCMP_ACT_ERRNO";
    [JsonPropertyName("errnoRet")] public uint? ErrnoRet { get; init; }
    [JsonPropertyName("args")] public IReadOnlyList<SpecSyscallArg>? Args { get; init; }
}

public sealed record SpecSyscallArg(
    [property: JsonPropertyName("index")] uint Index,
    [property: JsonPropertyName("value")] ulong Value,
    [property: JsonPropertyName("valueTwo")] ulong ValueTwo,
    [property: JsonPropertyName("op")] string Op);

[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, WriteIndented = true)]
[JsonSerializable(typeof(RuntimeSpec))]
[JsonSerializable(typeof(SpecSeccomp))]
[JsonSerializable(typeof(SpecResources))]
public sealed partial class RuntimeSpecJson : JsonSerializerContext;

/// <summary>A bundle's config.json, read and written through the source-generated context.</summary>
public static class RuntimeSpecFile
{
    public static async Task WriteAsync(string path, RuntimeSpec spec, CancellationToken ct) =>
        await File.WriteAllBytesAsync(path, JsonSerializer.SerializeToUtf8Bytes(spec, RuntimeSpecJson.Default.RuntimeSpec), ct).ConfigureAwait(false);

    /// <summary>The spec in <paramref name="path"/>, or null when the file holds JSON null.</summary>
    public static async Task<RuntimeSpec?> ReadAsync(string path, CancellationToken ct) =>
        JsonSerializer.Deserialize(await File.ReadAllBytesAsync(path, ct).ConfigureAwait(false), RuntimeSpecJson.Default.RuntimeSpec);
}
