using System.Text.Json.Nodes;

namespace Crest.Core;

/// <summary>A readiness condition as the CRI reports it; a false condition always has a reason and message.</summary>
public sealed record RuntimeCondition(string Type, bool Status, string Reason, string Message)
{
    public const string RuntimeReady = "RuntimeReady";
    public const string NetworkReady = "NetworkReady";

    /// <summary>Crest's own condition: can this node checkpoint and restore (CRIU present, new enough, enabled)?</summary>
    public const string CheckpointReady = "CheckpointReady";

    /// <summary>Crest's own condition: CheckpointPod and RestorePod (KEP-5823) are served and usable on this node.</summary>
    public const string PodCheckpointReady = "PodCheckpointReady";

    public static RuntimeCondition Ready(string type) => new(type, true, "", "");
}

/// <summary>A runtime handler the node offers (CRI runtime_handler), and whether its binary answered.</summary>
public sealed record RuntimeHandlerStatus(string Name, string BinaryPath, string? Version, string? Problem)
{
    public bool Available => Problem is null;

    /// <summary>What the runtime says it supports (<c>runc features</c>, the OCI features document); empty when it cannot say.</summary>
    public OciRuntimeFeatures Features { get; init; } = OciRuntimeFeatures.None;
}

/// <summary>The parts of an OCI runtime's features document Crest acts on.</summary>
public sealed record OciRuntimeFeatures(IReadOnlyList<string> MountOptions, IReadOnlyList<string> Namespaces, bool IdmapMounts)
{
    public static OciRuntimeFeatures None { get; } = new([], [], false);

    /// <summary>The "rro" mount option: a bind mount made read-only with every mount below it (mount_setattr AT_RECURSIVE).</summary>
    public bool RecursiveReadOnlyMounts => MountOptions.Contains("rro");
}

/// <summary>What the CRI Status RPC reports: conditions, the handlers, and detail for verbose callers (a JSON document per key).</summary>
public sealed record NodeStatus(
    IReadOnlyList<RuntimeCondition> Conditions,
    IReadOnlyList<RuntimeHandlerStatus> Handlers,
    IReadOnlyDictionary<string, JsonNode?> Detail);
