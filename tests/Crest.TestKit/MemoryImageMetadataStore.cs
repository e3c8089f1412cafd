using System.Collections.Concurrent;
using Crest.Core;

namespace Crest.TestKit;

/// <summary>An in-memory <see cref="IImageMetadataStore"/>: the fake behind the metadata seam.</summary>
public sealed class MemoryImageMetadataStore : IImageMetadataStore
{
    private readonly Lock _gate = new();
    private readonly Dictionary<Digest, ImageRecord> _images = [];
    private readonly Dictionary<string, (Digest Image, bool Tag)> _refs = new(StringComparer.Ordinal);
    private readonly Dictionary<string, SnapshotRecord> _snapshots = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<(string Holder, string Key), bool> _leases = new();

    public Task<ImageRecord?> GetImageAsync(Digest id, CancellationToken ct)
    {
        lock (_gate)
        {
            return Task.FromResult(_images.TryGetValue(id, out var i) ? WithRefs(i) : null);
        }
    }

    public Task<Digest?> ResolveReferenceAsync(string reference, CancellationToken ct)
    {
        lock (_gate)
        {
            return Task.FromResult<Digest?>(_refs.TryGetValue(reference, out var r) ? r.Image : null);
        }
    }

    public Task<IReadOnlyList<ImageRecord>> ListImagesAsync(CancellationToken ct)
    {
        lock (_gate)
        {
            return Task.FromResult<IReadOnlyList<ImageRecord>>(_images.Values.Select(WithRefs).ToList());
        }
    }

    public Task PutImageAsync(ImageRecord image, CancellationToken ct)
    {
        lock (_gate)
        {
            var blobs = _images.TryGetValue(image.Id, out var old) ? old.Blobs.Union(image.Blobs).ToList() : image.Blobs.ToList();
            _images[image.Id] = image with { Blobs = blobs };
            foreach (var t in image.RepoTags)
            {
                _refs[t] = (image.Id, true);
            }

            foreach (var d in image.RepoDigests)
            {
                _refs[d] = (image.Id, false);
            }
        }

        return Task.CompletedTask;
    }

    public Task<bool> DeleteImageAsync(Digest id, CancellationToken ct)
    {
        lock (_gate)
        {
            foreach (var r in _refs.Where(r => r.Value.Image == id).Select(r => r.Key).ToList())
            {
                _refs.Remove(r);
            }

            return Task.FromResult(_images.Remove(id));
        }
    }

    public Task<SnapshotRecord?> GetSnapshotAsync(string key, CancellationToken ct)
    {
        lock (_gate)
        {
            return Task.FromResult(_snapshots.GetValueOrDefault(key));
        }
    }

    public Task<IReadOnlyList<SnapshotRecord>> ListSnapshotsAsync(CancellationToken ct)
    {
        lock (_gate)
        {
            return Task.FromResult<IReadOnlyList<SnapshotRecord>>(_snapshots.Values.ToList());
        }
    }

    public Task<bool> AddSnapshotAsync(SnapshotRecord snapshot, CancellationToken ct)
    {
        lock (_gate)
        {
            return Task.FromResult(_snapshots.TryAdd(snapshot.Key, snapshot));
        }
    }

    public Task DeleteSnapshotAsync(string key, CancellationToken ct)
    {
        lock (_gate)
        {
            _snapshots.Remove(key);
        }

        return Task.CompletedTask;
    }

    public Task AddSnapshotLeaseAsync(string holder, string key, CancellationToken ct)
    {
        _leases[(holder, key)] = true;
        return Task.CompletedTask;
    }

    public Task RemoveSnapshotLeasesAsync(string holder, CancellationToken ct)
    {
        foreach (var k in _leases.Keys.Where(k => k.Holder == holder).ToList())
        {
            _leases.TryRemove(k, out _);
        }

        return Task.CompletedTask;
    }

    public Task<IReadOnlyList<string>> LeasedSnapshotsAsync(CancellationToken ct) =>
        Task.FromResult<IReadOnlyList<string>>(_leases.Keys.Select(k => k.Key).Distinct().ToList());

    private ImageRecord WithRefs(ImageRecord i) => i with
    {
        RepoTags = _refs.Where(r => r.Value.Image == i.Id && r.Value.Tag).Select(r => r.Key).Order(StringComparer.Ordinal).ToList(),
        RepoDigests = _refs.Where(r => r.Value.Image == i.Id && !r.Value.Tag).Select(r => r.Key).Order(StringComparer.Ordinal).ToList(),
    };
}
