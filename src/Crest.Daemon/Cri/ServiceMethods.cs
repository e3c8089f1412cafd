using C = Crest.Api.V1;
using R = Runtime.V1;

namespace Crest.Daemon.Cri;

// Written from the services' proto definitions (api.proto with KEP-5823's RPCs, crest_images.proto,
// crest_migration.proto), one line per RPC in declaration order; MethodBindingTests holds them to the generated
// descriptors, so an RPC added to a proto fails that test until it is bound here.

/// <summary>The methods of runtime.v1.RuntimeService, served by <see cref="CriRuntimeService"/>.</summary>
internal static class CriRuntimeServiceMethods
{
    private const string Service = "runtime.v1.RuntimeService";

    public static void Bind(MethodSink<CriRuntimeService> sink)
    {
        sink.Unary(Service, "CheckpointPod", R.CheckpointPodRequest.Parser, R.CheckpointPodResponse.Parser, (s, r, c) => s.CheckpointPod(r, c));
        sink.Unary(Service, "RestorePod", R.RestorePodRequest.Parser, R.RestorePodResponse.Parser, (s, r, c) => s.RestorePod(r, c));
        sink.Unary(Service, "Version", R.VersionRequest.Parser, R.VersionResponse.Parser, (s, r, c) => s.Version(r, c));
        sink.Unary(Service, "RunPodSandbox", R.RunPodSandboxRequest.Parser, R.RunPodSandboxResponse.Parser, (s, r, c) => s.RunPodSandbox(r, c));
        sink.Unary(Service, "StopPodSandbox", R.StopPodSandboxRequest.Parser, R.StopPodSandboxResponse.Parser, (s, r, c) => s.StopPodSandbox(r, c));
        sink.Unary(Service, "RemovePodSandbox", R.RemovePodSandboxRequest.Parser, R.RemovePodSandboxResponse.Parser, (s, r, c) => s.RemovePodSandbox(r, c));
        sink.Unary(Service, "PodSandboxStatus", R.PodSandboxStatusRequest.Parser, R.PodSandboxStatusResponse.Parser, (s, r, c) => s.PodSandboxStatus(r, c));
        sink.Unary(Service, "ListPodSandbox", R.ListPodSandboxRequest.Parser, R.ListPodSandboxResponse.Parser, (s, r, c) => s.ListPodSandbox(r, c));
        sink.Unary(Service, "CreateContainer", R.CreateContainerRequest.Parser, R.CreateContainerResponse.Parser, (s, r, c) => s.CreateContainer(r, c));
        sink.Unary(Service, "StartContainer", R.StartContainerRequest.Parser, R.StartContainerResponse.Parser, (s, r, c) => s.StartContainer(r, c));
        sink.Unary(Service, "StopContainer", R.StopContainerRequest.Parser, R.StopContainerResponse.Parser, (s, r, c) => s.StopContainer(r, c));
        sink.Unary(Service, "RemoveContainer", R.RemoveContainerRequest.Parser, R.RemoveContainerResponse.Parser, (s, r, c) => s.RemoveContainer(r, c));
        sink.Unary(Service, "ListContainers", R.ListContainersRequest.Parser, R.ListContainersResponse.Parser, (s, r, c) => s.ListContainers(r, c));
        sink.Unary(Service, "ContainerStatus", R.ContainerStatusRequest.Parser, R.ContainerStatusResponse.Parser, (s, r, c) => s.ContainerStatus(r, c));
        sink.Unary(Service, "UpdateContainerResources", R.UpdateContainerResourcesRequest.Parser, R.UpdateContainerResourcesResponse.Parser, (s, r, c) => s.UpdateContainerResources(r, c));
        sink.Unary(Service, "ReopenContainerLog", R.ReopenContainerLogRequest.Parser, R.ReopenContainerLogResponse.Parser, (s, r, c) => s.ReopenContainerLog(r, c));
        sink.Unary(Service, "ExecSync", R.ExecSyncRequest.Parser, R.ExecSyncResponse.Parser, (s, r, c) => s.ExecSync(r, c));
        sink.Unary(Service, "Exec", R.ExecRequest.Parser, R.ExecResponse.Parser, (s, r, c) => s.Exec(r, c));
        sink.Unary(Service, "Attach", R.AttachRequest.Parser, R.AttachResponse.Parser, (s, r, c) => s.Attach(r, c));
        sink.Unary(Service, "PortForward", R.PortForwardRequest.Parser, R.PortForwardResponse.Parser, (s, r, c) => s.PortForward(r, c));
        sink.Unary(Service, "ContainerStats", R.ContainerStatsRequest.Parser, R.ContainerStatsResponse.Parser, (s, r, c) => s.ContainerStats(r, c));
        sink.Unary(Service, "ListContainerStats", R.ListContainerStatsRequest.Parser, R.ListContainerStatsResponse.Parser, (s, r, c) => s.ListContainerStats(r, c));
        sink.Unary(Service, "PodSandboxStats", R.PodSandboxStatsRequest.Parser, R.PodSandboxStatsResponse.Parser, (s, r, c) => s.PodSandboxStats(r, c));
        sink.Unary(Service, "ListPodSandboxStats", R.ListPodSandboxStatsRequest.Parser, R.ListPodSandboxStatsResponse.Parser, (s, r, c) => s.ListPodSandboxStats(r, c));
        sink.Unary(Service, "UpdateRuntimeConfig", R.UpdateRuntimeConfigRequest.Parser, R.UpdateRuntimeConfigResponse.Parser, (s, r, c) => s.UpdateRuntimeConfig(r, c));
        sink.Unary(Service, "Status", R.StatusRequest.Parser, R.StatusResponse.Parser, (s, r, c) => s.Status(r, c));
        sink.Unary(Service, "CheckpointContainer", R.CheckpointContainerRequest.Parser, R.CheckpointContainerResponse.Parser, (s, r, c) => s.CheckpointContainer(r, c));
        sink.ServerStreaming(Service, "GetContainerEvents", R.GetEventsRequest.Parser, R.ContainerEventResponse.Parser, (s, r, w, c) => s.GetContainerEvents(r, w, c));
        sink.Unary(Service, "ListMetricDescriptors", R.ListMetricDescriptorsRequest.Parser, R.ListMetricDescriptorsResponse.Parser, (s, r, c) => s.ListMetricDescriptors(r, c));
        sink.Unary(Service, "ListPodSandboxMetrics", R.ListPodSandboxMetricsRequest.Parser, R.ListPodSandboxMetricsResponse.Parser, (s, r, c) => s.ListPodSandboxMetrics(r, c));
        sink.Unary(Service, "RuntimeConfig", R.RuntimeConfigRequest.Parser, R.RuntimeConfigResponse.Parser, (s, r, c) => s.RuntimeConfig(r, c));
    }
}

/// <summary>The methods of runtime.v1.ImageService, served by <see cref="CriImageService"/>.</summary>
internal static class CriImageServiceMethods
{
    private const string Service = "runtime.v1.ImageService";

    public static void Bind(MethodSink<CriImageService> sink)
    {
        sink.Unary(Service, "ListImages", R.ListImagesRequest.Parser, R.ListImagesResponse.Parser, (s, r, c) => s.ListImages(r, c));
        sink.Unary(Service, "ImageStatus", R.ImageStatusRequest.Parser, R.ImageStatusResponse.Parser, (s, r, c) => s.ImageStatus(r, c));
        sink.Unary(Service, "PullImage", R.PullImageRequest.Parser, R.PullImageResponse.Parser, (s, r, c) => s.PullImage(r, c));
        sink.Unary(Service, "RemoveImage", R.RemoveImageRequest.Parser, R.RemoveImageResponse.Parser, (s, r, c) => s.RemoveImage(r, c));
        sink.Unary(Service, "ImageFsInfo", R.ImageFsInfoRequest.Parser, R.ImageFsInfoResponse.Parser, (s, r, c) => s.ImageFsInfo(r, c));
    }
}

/// <summary>The methods of crest.v1.CrestImages, served by <see cref="CrestImagesService"/>.</summary>
internal static class CrestImagesServiceMethods
{
    private const string Service = "crest.v1.CrestImages";

    public static void Bind(MethodSink<CrestImagesService> sink)
    {
        sink.ServerStreaming(Service, "PullWithProgress", C.PullWithProgressRequest.Parser, C.PullEvent.Parser, (s, r, w, c) => s.PullWithProgress(r, w, c));
        sink.Unary(Service, "ImportRootfs", C.ImportRootfsRequest.Parser, C.ImportRootfsResponse.Parser, (s, r, c) => s.ImportRootfs(r, c));
        sink.Unary(Service, "LoadArchive", C.LoadArchiveRequest.Parser, C.LoadArchiveResponse.Parser, (s, r, c) => s.LoadArchive(r, c));
        sink.Unary(Service, "Push", C.PushRequest.Parser, C.PushResponse.Parser, (s, r, c) => s.Push(r, c));
        sink.Unary(Service, "CollectGarbage", C.CollectGarbageRequest.Parser, C.CollectGarbageResponse.Parser, (s, r, c) => s.CollectGarbage(r, c));
    }
}

/// <summary>The methods of crest.v1.CrestMigration, served by <see cref="CrestMigrationService"/>.</summary>
internal static class CrestMigrationServiceMethods
{
    private const string Service = "crest.v1.CrestMigration";

    public static void Bind(MethodSink<CrestMigrationService> sink)
    {
        sink.Unary(Service, "Capabilities", C.MigrationCapabilitiesRequest.Parser, C.MigrationCapabilitiesResponse.Parser, (s, r, c) => s.Capabilities(r, c));
        sink.Unary(Service, "Freeze", C.FreezeRequest.Parser, C.FreezeResponse.Parser, (s, r, c) => s.Freeze(r, c));
        sink.Unary(Service, "Resume", C.ResumeRequest.Parser, C.ResumeResponse.Parser, (s, r, c) => s.Resume(r, c));
        sink.Unary(Service, "KillFrozen", C.KillFrozenRequest.Parser, C.KillFrozenResponse.Parser, (s, r, c) => s.KillFrozen(r, c));
        sink.ServerStreaming(Service, "ReadArchive", C.ReadArchiveRequest.Parser, C.ArchiveChunk.Parser, (s, r, w, c) => s.ReadArchive(r, w, c));
        sink.ClientStreaming(Service, "WriteArchive", C.ArchiveChunk.Parser, C.WriteArchiveResponse.Parser, (s, r, c) => s.WriteArchive(r, c));
        sink.Unary(Service, "DropArchive", C.DropArchiveRequest.Parser, C.DropArchiveResponse.Parser, (s, r, c) => s.DropArchive(r, c));
        sink.Unary(Service, "LogTimes", C.LogTimesRequest.Parser, C.LogTimesResponse.Parser, (s, r, c) => s.LogTimes(r, c));
        sink.Unary(Service, "LazyPages", C.LazyPagesRequest.Parser, C.LazyPagesResponse.Parser, (s, r, c) => s.LazyPages(r, c));
        sink.Unary(Service, "PrepareRootfsRound", C.PrepareRootfsRoundRequest.Parser, C.PrepareRootfsRoundResponse.Parser, (s, r, c) => s.PrepareRootfsRound(r, c));
        sink.ClientStreaming(Service, "WriteRootfsRound", C.RootfsRoundChunk.Parser, C.WriteRootfsRoundResponse.Parser, (s, r, c) => s.WriteRootfsRound(r, c));
        sink.Unary(Service, "DropRootfsRounds", C.DropRootfsRoundsRequest.Parser, C.DropRootfsRoundsResponse.Parser, (s, r, c) => s.DropRootfsRounds(r, c));
        sink.Unary(Service, "FreezePod", C.FreezePodRequest.Parser, C.FreezePodResponse.Parser, (s, r, c) => s.FreezePod(r, c));
        sink.Unary(Service, "PreparePageClient", C.PreparePageClientRequest.Parser, C.PreparePageClientResponse.Parser, (s, r, c) => s.PreparePageClient(r, c));
        sink.Unary(Service, "PublishArchive", C.PublishArchiveRequest.Parser, C.PublishArchiveResponse.Parser, (s, r, c) => s.PublishArchive(r, c));
    }
}
