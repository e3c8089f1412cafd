using Microsoft.Extensions.Logging;

namespace Crest.Images;

internal static partial class ImagesLog
{
    [LoggerMessage(100, LogLevel.Information, "pulled {Image} as {ImageId} ({Size} bytes)")]
    public static partial void Pulled(ILogger logger, string image, string imageId, long size);

    [LoggerMessage(101, LogLevel.Warning, "blob {Digest} of {Image}: attempt {Attempt} failed, retrying: {Reason}")]
    public static partial void RetryingBlob(ILogger logger, string digest, string image, int attempt, string reason);

    [LoggerMessage(102, LogLevel.Information, "removed image {ImageId} ({References})")]
    public static partial void Removed(ILogger logger, string imageId, string references);

    [LoggerMessage(103, LogLevel.Information, "garbage collection removed {Blobs} blobs and {Snapshots} snapshots")]
    public static partial void Collected(ILogger logger, int blobs, int snapshots);

    [LoggerMessage(104, LogLevel.Information, "imported {Name} as {ImageId}")]
    public static partial void Imported(ILogger logger, string name, string imageId);

    [LoggerMessage(105, LogLevel.Information, "pushed {Image} ({Digest})")]
    public static partial void Pushed(ILogger logger, string image, string digest);

    [LoggerMessage(106, LogLevel.Warning, "the blobs of the published {Image} stay in the content store until the next garbage collection: {Reason}")]
    public static partial void PublishedBlobsKept(ILogger logger, string image, string reason);
}
