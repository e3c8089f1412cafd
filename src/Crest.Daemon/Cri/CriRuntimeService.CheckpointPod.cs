using Crest.Checkpoint;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>
    /// KEP-5823 CheckpointPod: one freeze for the pod's selected containers (all of them when container_ids is empty),
    /// a CRIU dump of each and the pod's shared state, written into output_path (new, or existing and empty) and nowhere
    /// else. The containers are always resumed before the call returns, unless post_checkpoint_state is STOPPED and the
    /// checkpoint succeeded: then the pod is left stopped. Unknown option keys are InvalidArgument; a missing pod is
    /// NotFound; a container that is not running is FailedPrecondition. The gRPC deadline bounds the call: when it
    /// fires, every container is resumed and the partial output is removed.
    /// </summary>
    public override async Task<CheckpointPodResponse> CheckpointPod(CheckpointPodRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        await checkpoints.Pods.CheckpointAsync(new PodCheckpointRequest
        {
            SandboxId = request.PodSandboxId,
            OutputPath = request.OutputPath,
            ContainerIds = request.ContainerIds,
            Options = request.Options,
            After = request.PostCheckpointState == PostCheckpointState.PostCheckpointStopped ? PodStateAfterCheckpoint.Stopped : PodStateAfterCheckpoint.Running,
        }, context.CancellationToken);
        return new CheckpointPodResponse();
    }
}
