using System.Security.Cryptography;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Images;
using Crest.Linux;

namespace Crest.Checkpoint;

/// <summary>The three forms a RestorePod checkpoint_path may take (docs/pod-checkpoint-format.md).</summary>
public enum PodCheckpointSourceKind
{
    /// <summary>The directory CheckpointPod wrote, used where it is.</summary>
    Directory,
    /// <summary>That directory as one tar (plain, gzip or zstd): <c>crest checkpoint pod --export</c>.</summary>
    Archive,
    /// <summary>A local pod checkpoint OCI image, by reference: <c>crest checkpoint pod --image</c>.</summary>
    Image,
}

/// <summary>
/// A pod checkpoint opened as a directory. A tar or an image is unpacked into a staging directory of its own, removed
/// on dispose; a directory source is read in place and left alone.
/// </summary>
public sealed class OpenedPodCheckpoint : IDisposable
{
    private readonly string? _staging;

    internal OpenedPodCheckpoint(string source, PodCheckpointSourceKind kind, string directory, string? staging)
    {
        Source = source;
        Kind = kind;
        Directory = directory;
        _staging = staging;
    }

    /// <summary>What the request named: a path or an image reference.</summary>
    public string Source { get; }

    public PodCheckpointSourceKind Kind { get; }

    /// <summary>The pod checkpoint directory to read.</summary>
    public string Directory { get; }

    public void Dispose()
    {
        if (_staging is not null && System.IO.Directory.Exists(_staging))
        {
            System.IO.Directory.Delete(_staging, recursive: true);
        }
    }
}

/// <summary>
/// Opens RestorePod's checkpoint_path: an absolute path to a directory (used as is) or to a regular file (a tar,
/// unpacked through the safe extractor: regular files and directories only, within the [restore] caps), or else a
/// local image reference whose annotations mark it as a pod checkpoint (its layers copied as a container checkpoint
/// image's are). Staging directories live under <c>&lt;root&gt;/restores</c>, 0700, which crestd sweeps at start.
/// </summary>
public sealed class PodCheckpointSources(ImageService images, CrestPaths paths, RestoreOptions options)
{
    /// <summary>Which form <paramref name="checkpointPath"/> takes, from the path alone (links are not followed).</summary>
    public static PodCheckpointSourceKind Detect(string checkpointPath)
    {
        if (string.IsNullOrWhiteSpace(checkpointPath))
        {
            throw new CrestException(ErrorKind.InvalidArgument, "RestorePod needs a checkpoint_path: a pod checkpoint directory, a pod checkpoint tar, or a pod checkpoint image");
        }

        if (!Path.IsPathRooted(checkpointPath))
        {
            return PodCheckpointSourceKind.Image;
        }

        if (FileKinds.IsDirectory(checkpointPath))
        {
            return PodCheckpointSourceKind.Directory;
        }

        if (FileKinds.IsRegularFile(checkpointPath))
        {
            return PodCheckpointSourceKind.Archive;
        }

        throw new CrestException(ErrorKind.InvalidArgument,
            $"RestorePod checkpoint_path {checkpointPath} is neither a directory nor a regular file (a missing path, or a link, which is not followed); give the pod checkpoint directory or tar itself");
    }

    public async Task<OpenedPodCheckpoint> OpenAsync(string checkpointPath, CancellationToken ct)
    {
        var kind = Detect(checkpointPath);
        return kind switch
        {
            PodCheckpointSourceKind.Directory => new OpenedPodCheckpoint(checkpointPath, kind, checkpointPath, null),
            PodCheckpointSourceKind.Archive => await OpenArchiveAsync(checkpointPath, RestoresRoot, options.Limits, ct).ConfigureAwait(false),
            _ => await OpenImageAsync(checkpointPath, ct).ConfigureAwait(false),
        };
    }

    private string RestoresRoot => paths.Restores;

    /// <summary>Unpacks the pod checkpoint tar at <paramref name="archive"/> into a fresh staging directory under <paramref name="restoresRoot"/>.</summary>
    public static async Task<OpenedPodCheckpoint> OpenArchiveAsync(string archive, string restoresRoot, RestoreLimits limits, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(limits);
        var staging = NewStaging(restoresRoot);
        try
        {
            await using (var file = new FileStream(FileKinds.OpenReadNoFollow(archive), FileAccess.Read, 1 << 20))
            {
                await new CheckpointReader(limits).UnpackAsync(file, staging, $"pod checkpoint archive {archive}", ct).ConfigureAwait(false);
            }

            return new OpenedPodCheckpoint(archive, PodCheckpointSourceKind.Archive, staging, staging);
        }
        catch
        {
            System.IO.Directory.Delete(staging, recursive: true);
            throw;
        }
    }

    private async Task<OpenedPodCheckpoint> OpenImageAsync(string reference, CancellationToken ct)
    {
        var details = await images.InspectAsync(reference, ct).ConfigureAwait(false)
            ?? throw new CrestException(ErrorKind.NotFound,
                $"RestorePod checkpoint_path {reference} is not an absolute path, and no image of that name is on this node; give a pod checkpoint directory, tar, or a local pod checkpoint image");
        var annotations = await images.AnnotationsAsync(details, ct).ConfigureAwait(false);
        if (!annotations.ContainsKey(PodCheckpointFiles.ImageAnnotation))
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"image {reference} is not a pod checkpoint image (it has no {PodCheckpointFiles.ImageAnnotation} annotation); a container checkpoint image is restored through CreateContainer");
        }

        var layers = details.Image.ChainId is { } chain ? await images.Snapshots.LowerDirsAsync(chain, ct).ConfigureAwait(false) : [];
        var staging = NewStaging(RestoresRoot);
        try
        {
            new CheckpointReader(options.Limits).CopyImageLayers(layers, reference, staging, ct);
            return new OpenedPodCheckpoint(reference, PodCheckpointSourceKind.Image, staging, staging);
        }
        catch
        {
            System.IO.Directory.Delete(staging, recursive: true);
            throw;
        }
    }

    private static string NewStaging(string restoresRoot)
    {
        const UnixFileMode owner = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
        System.IO.Directory.CreateDirectory(restoresRoot, owner);
        var staging = Path.Combine(restoresRoot, Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16)));
        System.IO.Directory.CreateDirectory(staging, owner);
        return staging;
    }
}
