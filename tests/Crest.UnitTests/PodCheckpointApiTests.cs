using Runtime.V1;

namespace Crest.UnitTests;

/// <summary>
/// The KEP-5823 messages Crest splices into its copy of the CRI api.proto: a kubelet built with the feature sends these
/// field numbers, so they must not drift from the revision ARCHITECTURE.md names.
/// </summary>
public class PodCheckpointApiTests
{
    [Fact]
    public void The_pod_checkpoint_messages_carry_the_keps_field_numbers()
    {
        Assert.Equal(1, CheckpointPodRequest.PodSandboxIdFieldNumber);
        Assert.Equal(2, CheckpointPodRequest.OutputPathFieldNumber);
        Assert.Equal(3, CheckpointPodRequest.ContainerIdsFieldNumber);
        Assert.Equal(4, CheckpointPodRequest.OptionsFieldNumber);
        Assert.Equal(5, CheckpointPodRequest.PostCheckpointStateFieldNumber);
        Assert.Equal(0, (int)PostCheckpointState.PostCheckpointRunning);
        Assert.Equal(1, (int)PostCheckpointState.PostCheckpointStopped);
        Assert.Equal(1, RestorePodRequest.CheckpointPathFieldNumber);
        Assert.Equal(2, RestorePodRequest.ConfigFieldNumber);
        Assert.Equal(3, RestorePodRequest.RuntimeHandlerFieldNumber);
        Assert.Equal(4, RestorePodRequest.OptionsFieldNumber);
        Assert.Equal(5, RestorePodRequest.ContainerConfigsFieldNumber);
        Assert.Equal(1, RestorePodResponse.PodSandboxIdFieldNumber);
        Assert.Equal(2, RestorePodResponse.RestoredContainersFieldNumber);
        Assert.Equal(1, RestoredContainer.NameFieldNumber);
        Assert.Equal(2, RestoredContainer.ContainerIdFieldNumber);
        Assert.Contains(RuntimeService.Descriptor.Methods, m => m.Name == "CheckpointPod" && m.InputType == CheckpointPodRequest.Descriptor);
        Assert.Contains(RuntimeService.Descriptor.Methods, m => m.Name == "RestorePod" && m.OutputType == RestorePodResponse.Descriptor);
    }
}
