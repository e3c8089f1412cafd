using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriImageService
{
    public override Task<ImageFsInfoResponse> ImageFsInfo(ImageFsInfoRequest request, ServerCallContext context)
    {
        var now = time.GetUtcNow().ToUnixTimeMilliseconds() * 1_000_000;
        var imageFs = Images.ImageService.Usage(paths.Root, paths.Content, paths.Snapshots);
        var containerFs = Images.ImageService.Usage(paths.Containers, paths.Containers);
        var response = new ImageFsInfoResponse();
        response.ImageFilesystems.Add(ToCri(imageFs, now));
        response.ContainerFilesystems.Add(ToCri(containerFs, now));
        return Task.FromResult(response);
    }

    private static FilesystemUsage ToCri(Images.FilesystemUsage usage, long timestamp) => new()
    {
        Timestamp = timestamp,
        FsId = new FilesystemIdentifier { Mountpoint = usage.Path },
        UsedBytes = new UInt64Value { Value = (ulong)usage.Bytes },
        InodesUsed = new UInt64Value { Value = (ulong)usage.Inodes },
    };
}
