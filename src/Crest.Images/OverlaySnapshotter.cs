using Crest.Core;

namespace Crest.Images;

/// <summary>Committed, read-only layer snapshots that stack as overlay lower directories.</summary>
public interface ISnapshotter
{
    string Root { get; }

    Task<SnapshotRecord?> GetAsync(string key, CancellationToken ct);

    /// <summary>Every committed snapshot: garbage collection weighs each against the images and leases.</summary>
    Task<IReadOnlyList<SnapshotRecord>> ListAsync(CancellationToken ct);

    /// <summary>
    /// Makes the snapshot <paramref name="key"/> on top of <paramref name="parent"/>, filling a fresh private
    /// directory with <paramref name="fill"/>. Idempotent: an existing snapshot is returned without filling.
    /// If <paramref name="fill"/> fails, nothing is left behind.
    /// </summary>
    Task<SnapshotRecord> CommitAsync(string key, string? parent, Func<string, CancellationToken, Task<long>> fill, CancellationToken ct);

    /// <summary>The fs directories of the snapshot and its ancestors, top first: an overlay lowerdir list.</summary>
    Task<IReadOnlyList<string>> LowerDirsAsync(string key, CancellationToken ct);

    /// <summary>Removes a snapshot; FailedPrecondition while another snapshot sits on it.</summary>
    Task RemoveAsync(string key, CancellationToken ct);

    /// <summary>Removes directories no snapshot record names (left by a crash mid-commit).</summary>
    Task CleanOrphansAsync(CancellationToken ct);
}

/// <summary>
/// Each layer is unpacked once into &lt;root&gt;/&lt;id&gt;/fs, keyed by chain ID, with whiteouts in overlay form,
/// so a container's rootfs is one overlay mount over the chain. A commit unpacks into &lt;root&gt;/.tmp-*/ and
/// renames into place before the record is written; a crash leaves only a temporary or orphan directory,
/// which start-up removes.
/// </summary>
public sealed class OverlaySnapshotter : ISnapshotter
{
    private readonly IImageMetadataStore _metadata;
    private readonly TimeProvider _time;

    public OverlaySnapshotter(string root, IImageMetadataStore metadata, TimeProvider time)
    {
        Root = root;
        _metadata = metadata;
        _time = time;
        Directory.CreateDirectory(root);
    }

    public string Root { get; }

    public Task<SnapshotRecord?> GetAsync(string key, CancellationToken ct) => _metadata.GetSnapshotAsync(key, ct);

    public Task<IReadOnlyList<SnapshotRecord>> ListAsync(CancellationToken ct) => _metadata.ListSnapshotsAsync(ct);

    public async Task<SnapshotRecord> CommitAsync(string key, string? parent, Func<string, CancellationToken, Task<long>> fill, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(fill);
        if (await _metadata.GetSnapshotAsync(key, ct).ConfigureAwait(false) is { } existing)
        {
            return existing;
        }

        if (parent is not null && await _metadata.GetSnapshotAsync(parent, ct).ConfigureAwait(false) is null)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"snapshot {key} needs its parent {parent}, which does not exist");
        }

        var id = Guid.NewGuid().ToString("N")[..16];
        var temp = Path.Combine(Root, ".tmp-" + id);
        var fs = Path.Combine(temp, "fs");
        Directory.CreateDirectory(fs);
        File.SetUnixFileMode(temp, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        try
        {
            var size = await fill(fs, ct).ConfigureAwait(false);
            // The layer's root directory is world-readable, as in every image.
            File.SetUnixFileMode(fs, (UnixFileMode)0x1ED);
            var final = Path.Combine(Root, id);
            Directory.Move(temp, final);
            var record = new SnapshotRecord(key, id, parent, size, _time.GetUtcNow());
            if (!await _metadata.AddSnapshotAsync(record, CancellationToken.None).ConfigureAwait(false))
            {
                // Another pull committed the same layer meanwhile: keep theirs.
                DeleteTree(final);
                return (await _metadata.GetSnapshotAsync(key, CancellationToken.None).ConfigureAwait(false))!;
            }

            return record;
        }
        finally
        {
            DeleteTree(temp);
        }
    }

    public async Task<IReadOnlyList<string>> LowerDirsAsync(string key, CancellationToken ct)
    {
        var dirs = new List<string>();
        string? current = key;
        while (current is not null)
        {
            var s = await _metadata.GetSnapshotAsync(current, ct).ConfigureAwait(false)
                ?? throw new CrestException(ErrorKind.NotFound, $"snapshot {current} (in the chain of {key}) does not exist");
            dirs.Add(Path.Combine(Root, s.Directory, "fs"));
            current = s.Parent;
        }

        return dirs;
    }

    public async Task RemoveAsync(string key, CancellationToken ct)
    {
        var s = await _metadata.GetSnapshotAsync(key, ct).ConfigureAwait(false);
        if (s is null)
        {
            return;
        }

        var children = (await _metadata.ListSnapshotsAsync(ct).ConfigureAwait(false)).Where(c => c.Parent == key).Select(c => c.Key).ToList();
        if (children.Count > 0)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"snapshot {key} cannot be removed: {string.Join(", ", children)} sit on it");
        }

        // Record first, then directory: a crash in between leaves an orphan directory, never a record without one.
        await _metadata.DeleteSnapshotAsync(key, ct).ConfigureAwait(false);
        DeleteTree(Path.Combine(Root, s.Directory));
    }

    public async Task CleanOrphansAsync(CancellationToken ct)
    {
        var known = (await _metadata.ListSnapshotsAsync(ct).ConfigureAwait(false)).Select(s => s.Directory).ToHashSet(StringComparer.Ordinal);
        foreach (var dir in Directory.EnumerateDirectories(Root))
        {
            var name = Path.GetFileName(dir);
            if (!known.Contains(name))
            {
                DeleteTree(dir);
            }
        }
    }

    /// <summary>Deletes a tree without following symlinks (layers are full of them).</summary>
    internal static void DeleteTree(string path)
    {
        var info = new DirectoryInfo(path);
        if (!info.Exists)
        {
            return;
        }

        // Read-only directories inside a layer would stop the delete; open them up first.
        foreach (var d in info.EnumerateDirectories("*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.ReparsePoint }))
        {
            try
            {
                d.UnixFileMode |= UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
            }
            catch (IOException)
            {
            }
        }

        info.Delete(recursive: true);
    }
}
