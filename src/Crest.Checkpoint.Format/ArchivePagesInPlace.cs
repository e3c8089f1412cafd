using Crest.Linux;
using Microsoft.Win32.SafeHandles;

namespace Crest.Checkpoint.Format;

/// <summary>
/// Serves the CRIU page images of a plain (uncompressed) checkpoint archive where the archive holds them, so that a
/// restore does not copy the container's memory to disk before CRIU reads it (Crest.Checkpoint's
/// <c>ArchivePageMounts</c>: an erofs index over the tar, mounted read-only).
/// </summary>
public interface IArchivePagesInPlace
{
    /// <summary>Page images smaller than this in all are written out as any file: serving them costs more than the copy.</summary>
    long MinimumBytes { get; }

    /// <summary>Whether this node can serve page images at all; when it cannot, an archive is unpacked in one pass, with no offer.</summary>
    ValueTask<bool> AvailableAsync(CancellationToken ct);

    /// <summary>
    /// Makes each of <paramref name="files"/> (regular entries of the plain tar open as <paramref name="archive"/>)
    /// readable at its name under <paramref name="stagingDir"/>, where nothing has that name yet; false when it cannot,
    /// with nothing of its own left in <paramref name="stagingDir"/>.
    /// </summary>
    Task<bool> TryServeAsync(SafeFileHandle archive, string stagingDir, IReadOnlyList<ArchivedFile> files, CancellationToken ct);
}
