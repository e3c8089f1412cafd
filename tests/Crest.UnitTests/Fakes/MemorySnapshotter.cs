using Crest.Core;
using Crest.Images;

namespace Crest.UnitTests.Fakes;

/// <summary>
/// An <see cref="ISnapshotter"/> that keeps its records in memory instead of a metadata store. Layers still
/// unpack into real directories under <see cref="Root"/> (a temp dir), because callers fill and read them as
/// files; no rename, no root. <see cref="BeforeFill"/> lets a test hold a commit at the point where a pull has
/// fetched its blobs but not yet recorded its image.
/// </summary>
internal sealed class MemorySnapshotter : ISnapshotter
{
    private readonly Lock _gate = new();
    private readonly Dictionary<string, SnapshotRecord> _records = new(StringComparer.Ordinal);
    private int _nextDirectory;

    public MemorySnapshotter(string root)
    {
        Root = root;
        Directory.CreateDirectory(root);
    }

    public string Root { get; }

    /// <summary>Awaited with the snapshot key before each fill.</summary>
    public Func<string, CancellationToken, Task>? BeforeFill { get; set; }

    public Task<SnapshotRecord?> GetAsync(string key, CancellationToken ct)
    {
        lock (_gate)
        {
            return Task.FromResult(_records.GetValueOrDefault(key));
        }
    }

    public Task<IReadOnlyList<SnapshotRecord>> ListAsync(CancellationToken ct)
    {
        lock (_gate)
        {
            return Task.FromResult<IReadOnlyList<SnapshotRecord>>([.. _records.Values]);
        }
    }

    public async Task<SnapshotRecord> CommitAsync(string key, string? parent, Func<string, CancellationToken, Task<long>> fill, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(fill);
        string directory;
        lock (_gate)
        {
            if (_records.TryGetValue(key, out var existing))
            {
                return existing;
            }

            if (parent is not null && !_records.ContainsKey(parent))
            {
                throw new CrestException(ErrorKind.FailedPrecondition, $"snapshot {key} needs its parent {parent}, which does not exist");
            }

            directory = (++_nextDirectory).ToString("x16", System.Globalization.CultureInfo.InvariantCulture);
        }

        var fs = Directory.CreateDirectory(Path.Combine(Root, directory, "fs")).FullName;
        try
        {
            if (BeforeFill is { } hold)
            {
                await hold(key, ct);
            }

            var size = await fill(fs, ct);
            lock (_gate)
            {
                // Two commits of one key may fill at once, as two pulls sharing a layer do: the first record wins.
                if (_records.TryAdd(key, new SnapshotRecord(key, directory, parent, size, DateTimeOffset.UtcNow)))
                {
                    return _records[key];
                }
            }

            DeleteDirectory(directory);
            return (await GetAsync(key, ct))!;
        }
        catch
        {
            DeleteDirectory(directory);
            throw;
        }
    }

    public Task<IReadOnlyList<string>> LowerDirsAsync(string key, CancellationToken ct)
    {
        var dirs = new List<string>();
        lock (_gate)
        {
            string? current = key;
            while (current is not null)
            {
                var s = _records.GetValueOrDefault(current)
                    ?? throw new CrestException(ErrorKind.NotFound, $"snapshot {current} (in the chain of {key}) does not exist");
                dirs.Add(Path.Combine(Root, s.Directory, "fs"));
                current = s.Parent;
            }
        }

        return Task.FromResult<IReadOnlyList<string>>(dirs);
    }

    public Task RemoveAsync(string key, CancellationToken ct)
    {
        string directory;
        lock (_gate)
        {
            if (!_records.TryGetValue(key, out var record))
            {
                return Task.CompletedTask;
            }

            var children = _records.Values.Where(c => c.Parent == key).Select(c => c.Key).ToList();
            if (children.Count > 0)
            {
                throw new CrestException(ErrorKind.FailedPrecondition, $"snapshot {key} cannot be removed: {string.Join(", ", children)} sit on it");
            }

            _records.Remove(key);
            directory = record.Directory;
        }

        DeleteDirectory(directory);
        return Task.CompletedTask;
    }

    public Task CleanOrphansAsync(CancellationToken ct)
    {
        HashSet<string> known;
        lock (_gate)
        {
            known = _records.Values.Select(r => r.Directory).ToHashSet(StringComparer.Ordinal);
        }

        foreach (var dir in Directory.EnumerateDirectories(Root))
        {
            if (!known.Contains(Path.GetFileName(dir)))
            {
                OverlaySnapshotter.DeleteTree(dir);
            }
        }

        return Task.CompletedTask;
    }

    // Layers hold read-only directories and symlinks; the real snapshotter's delete copes with both.
    private void DeleteDirectory(string directory) => OverlaySnapshotter.DeleteTree(Path.Combine(Root, directory));
}
