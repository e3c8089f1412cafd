namespace Crest.Checkpoint;

/// <summary>The checkpoint layer's services as the CRI adapters see them: container and pod checkpoint and restore.</summary>
public sealed record CheckpointServices(CheckpointService Containers, RestoreService Restores, PodCheckpointService Pods, PodRestoreService PodRestores);
