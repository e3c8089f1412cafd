namespace Crest.Core;

/// <summary>The engine that wrote a checkpoint, as checkpointctl tells them apart (spec.dump io.container.manager).</summary>
public enum CheckpointEngine
{
    Crest,
    Containerd,
    CriO,
    Podman,
}

/// <summary>Where a checkpoint comes from: an archive on the node, or a checkpoint image in the local store.</summary>
public enum CheckpointSourceKind
{
    Archive,
    Image,
}

/// <summary>A bind mount recorded in a checkpoint (CRI-O's bind.mounts).</summary>
public sealed record CheckpointBindMount(string Source, string Destination, bool IsDirectory, uint Permissions);

/// <summary>
/// One restore, normalised from a Crest, containerd, CRI-O or Podman checkpoint: everything CreateContainer needs to
/// know, read from untrusted files and checked. The runtime layer consumes it; only the checkpoint layer builds it.
/// </summary>
public sealed record RestorePlan
{
    public required CheckpointEngine Engine { get; init; }
    public required CheckpointSourceKind SourceKind { get; init; }
    /// <summary>The archive path or image as the request named it.</summary>
    public required string Source { get; init; }
    /// <summary>The base image by digest (NAME@sha256:...), the only form pulled without a warning; null when the checkpoint names none.</summary>
    public string? BaseImageDigestReference { get; init; }
    /// <summary>A local image ID the checkpoint names (containerd's and CRI-O's fallback); looked up locally, never pulled.</summary>
    public string? BaseImageId { get; init; }
    /// <summary>The base image's tag (NAME:TAG): shown to users, and used only when nothing better is known.</summary>
    public string? BaseImageName { get; init; }
    /// <summary>The name the checkpointed container had (CRI metadata name where the archive has it).</summary>
    public required string OriginalName { get; init; }
    public required string OriginalRuntime { get; init; }
    /// <summary>The checkpointed process's argv from spec.dump: the new spec needs one, although CRIU restores the real one from memory.</summary>
    public IReadOnlyList<string> ProcessArgs { get; init; } = [];
    /// <summary>The checkpointed process had joined a pid namespace by path (a pod's): CRIU can restore it only into a joined one again.</summary>
    public bool JoinedPidNamespace { get; init; }
    public required IReadOnlyDictionary<string, string> Annotations { get; init; }
    public required IReadOnlyDictionary<string, string> Labels { get; init; }
    public required DateTimeOffset CheckpointedAt { get; init; }
    public IReadOnlyList<CheckpointBindMount> BindMounts { get; init; } = [];
    /// <summary>Bind-mount destinations of the checkpointed container; each must be declared again by the restore request.</summary>
    public IReadOnlyList<string> MountDestinations { get; init; } = [];
    /// <summary>The name of the old log copy inside <see cref="StagingDir"/>, if the checkpoint has one.</summary>
    public string? LogCopy { get; init; }
    /// <summary>The private (0700) directory the checkpoint was unpacked into.</summary>
    public required string StagingDir { get; init; }
    /// <summary>Sizes, for logs and `crest checkpoint inspect`.</summary>
    public long RootfsDiffBytes { get; init; }
    public long CriuImageBytes { get; init; }
}
