using Crest.Core;

namespace Crest.Images;

public sealed partial class ImageService
{
    /// <summary>
    /// Removes an image (by ID, tag or digest) with all its names, then collects what nothing references.
    /// Idempotent, as the CRI asks: an image that is not here is not an error. Snapshots a container holds stay.
    /// </summary>
    public async Task<bool> RemoveAsync(string image, CancellationToken ct)
    {
        var record = await ResolveLocalAsync(image, ct).ConfigureAwait(false);
        if (record is null)
        {
            return false;
        }

        await metadata.DeleteImageAsync(record.Id, ct).ConfigureAwait(false);
        ImagesLog.Removed(logger, record.Id.ToString(), string.Join(", ", record.RepoTags.Concat(record.RepoDigests)));
        await CollectGarbageAsync(ct).ConfigureAwait(false);
        return true;
    }

    /// <summary>Deletes blobs no image references and snapshots neither an image nor a lease (a container) needs.</summary>
    public async Task<(int Blobs, int Snapshots)> CollectGarbageAsync(CancellationToken ct)
    {
        using var exclusive = await _gcLock.WriteAsync(ct).ConfigureAwait(false);
        var images = await metadata.ListImagesAsync(ct).ConfigureAwait(false);
        var liveBlobs = images.SelectMany(i => i.Blobs).ToHashSet();
        var blobsRemoved = 0;
        foreach (var blob in content.List().ToList())
        {
            if (!liveBlobs.Contains(blob))
            {
                content.Delete(blob);
                blobsRemoved++;
            }
        }

        content.CleanIngest();
        if (blobsRemoved > 0)
        {
            CrashPoints.Hit(CrashPoints.ImageGcCollecting);
        }

        // The snapshotter owns its records: GC asks it, not the store behind it.
        var all = (await snapshots.ListAsync(ct).ConfigureAwait(false)).ToDictionary(s => s.Key, StringComparer.Ordinal);
        var live = new HashSet<string>(StringComparer.Ordinal);
        foreach (var key in images.SelectMany(i => i.LayerChainIds).Concat(await metadata.LeasedSnapshotsAsync(ct).ConfigureAwait(false)))
        {
            // A live snapshot keeps its whole chain.
            for (var k = key; k is not null && live.Add(k); k = all.TryGetValue(k, out var s) ? s.Parent : null)
            {
            }
        }

        var snapshotsRemoved = 0;
        var dead = all.Values.Where(s => !live.Contains(s.Key)).ToList();
        // Children before parents.
        while (dead.Count > 0)
        {
            var leaves = dead.Where(d => dead.All(o => o.Parent != d.Key)).ToList();
            foreach (var leaf in leaves)
            {
                await snapshots.RemoveAsync(leaf.Key, ct).ConfigureAwait(false);
                snapshotsRemoved++;
            }

            dead.RemoveAll(leaves.Contains);
        }

        await snapshots.CleanOrphansAsync(ct).ConfigureAwait(false);
        if (blobsRemoved + snapshotsRemoved > 0)
        {
            ImagesLog.Collected(logger, blobsRemoved, snapshotsRemoved);
        }

        return (blobsRemoved, snapshotsRemoved);
    }
}
