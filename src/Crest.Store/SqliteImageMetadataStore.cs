using System.Globalization;
using System.Text.Json;
using Crest.Core;
using Microsoft.Data.Sqlite;

namespace Crest.Store;

/// <summary>Image, reference, blob and snapshot records in crestd's SQLite store.</summary>
public sealed class SqliteImageMetadataStore(MetadataStore store) : IImageMetadataStore
{
    public async Task<ImageRecord?> GetImageAsync(Digest id, CancellationToken ct)
    {
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        return await ReadImageAsync(c, id.ToString(), ct).ConfigureAwait(false);
    }

    public async Task<Digest?> ResolveReferenceAsync(string reference, CancellationToken ct)
    {
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        await using var cmd = Command(c, "SELECT image_id FROM image_refs WHERE ref = $ref;", ("$ref", reference));
        var id = (string?)await cmd.ExecuteScalarAsync(ct).ConfigureAwait(false);
        return id is null ? null : Digest.Parse(id);
    }

    public async Task<IReadOnlyList<ImageRecord>> ListImagesAsync(CancellationToken ct)
    {
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        var ids = new List<string>();
        await using (var cmd = Command(c, "SELECT id FROM images ORDER BY created_at, id;"))
        await using (var r = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false))
        {
            while (await r.ReadAsync(ct).ConfigureAwait(false))
            {
                ids.Add(r.GetString(0));
            }
        }

        var images = new List<ImageRecord>();
        foreach (var id in ids)
        {
            if (await ReadImageAsync(c, id, ct).ConfigureAwait(false) is { } image)
            {
                images.Add(image);
            }
        }

        return images;
    }

    public async Task PutImageAsync(ImageRecord image, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(image);
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        await using var tx = (SqliteTransaction)await c.BeginTransactionAsync(ct).ConfigureAwait(false);
        await Exec(c, tx, """
            INSERT INTO images(id, manifest_digest, target_digest, target_media_type, chain_id, size, created_at, layer_chain_ids)
            VALUES ($id, $manifest, $target, $mt, $chain, $size, $created, $layers)
            ON CONFLICT(id) DO UPDATE SET manifest_digest = $manifest, target_digest = $target, target_media_type = $mt,
                chain_id = $chain, size = $size, layer_chain_ids = $layers;
            """, ct,
            ("$id", image.Id.ToString()), ("$manifest", image.ManifestDigest.ToString()), ("$target", image.TargetDigest.ToString()),
            ("$mt", image.TargetMediaType), ("$chain", (object?)image.ChainId ?? DBNull.Value), ("$size", image.Size),
            ("$created", image.CreatedAt.ToString("O", CultureInfo.InvariantCulture)), ("$layers", JsonSerializer.Serialize(image.LayerChainIds.ToList(), RuntimeStoreJson.Default.ListString)))
            .ConfigureAwait(false);
        foreach (var tag in image.RepoTags)
        {
            await Exec(c, tx, "INSERT INTO image_refs(ref, kind, image_id) VALUES ($ref, 'tag', $id) ON CONFLICT(ref) DO UPDATE SET image_id = $id, kind = 'tag';",
                ct, ("$ref", tag), ("$id", image.Id.ToString())).ConfigureAwait(false);
        }

        foreach (var digest in image.RepoDigests)
        {
            await Exec(c, tx, "INSERT INTO image_refs(ref, kind, image_id) VALUES ($ref, 'digest', $id) ON CONFLICT(ref) DO UPDATE SET image_id = $id, kind = 'digest';",
                ct, ("$ref", digest), ("$id", image.Id.ToString())).ConfigureAwait(false);
        }

        foreach (var blob in image.Blobs.Distinct())
        {
            await Exec(c, tx, "INSERT INTO image_blobs(image_id, digest) VALUES ($id, $digest) ON CONFLICT DO NOTHING;",
                ct, ("$id", image.Id.ToString()), ("$digest", blob.ToString())).ConfigureAwait(false);
        }

        await tx.CommitAsync(ct).ConfigureAwait(false);
    }

    public async Task<bool> DeleteImageAsync(Digest id, CancellationToken ct)
    {
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        await using var cmd = Command(c, "DELETE FROM images WHERE id = $id;", ("$id", id.ToString()));
        return await cmd.ExecuteNonQueryAsync(ct).ConfigureAwait(false) > 0;
    }

    public async Task<SnapshotRecord?> GetSnapshotAsync(string key, CancellationToken ct)
    {
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        await using var cmd = Command(c, "SELECT key, directory, parent, size, created_at FROM snapshots WHERE key = $key;", ("$key", key));
        await using var r = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
        return await r.ReadAsync(ct).ConfigureAwait(false) ? ReadSnapshot(r) : null;
    }

    public async Task<IReadOnlyList<SnapshotRecord>> ListSnapshotsAsync(CancellationToken ct)
    {
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        await using var cmd = Command(c, "SELECT key, directory, parent, size, created_at FROM snapshots ORDER BY created_at;");
        await using var r = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
        var list = new List<SnapshotRecord>();
        while (await r.ReadAsync(ct).ConfigureAwait(false))
        {
            list.Add(ReadSnapshot(r));
        }

        return list;
    }

    public async Task<bool> AddSnapshotAsync(SnapshotRecord snapshot, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        await using var cmd = Command(c, """
            INSERT INTO snapshots(key, directory, parent, size, created_at) VALUES ($key, $dir, $parent, $size, $created)
            ON CONFLICT(key) DO NOTHING;
            """,
            ("$key", snapshot.Key), ("$dir", snapshot.Directory), ("$parent", (object?)snapshot.Parent ?? DBNull.Value),
            ("$size", snapshot.Size), ("$created", snapshot.CreatedAt.ToString("O", CultureInfo.InvariantCulture)));
        return await cmd.ExecuteNonQueryAsync(ct).ConfigureAwait(false) > 0;
    }

    public async Task DeleteSnapshotAsync(string key, CancellationToken ct)
    {
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        await using var cmd = Command(c, "DELETE FROM snapshots WHERE key = $key;", ("$key", key));
        await cmd.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
    }

    public async Task AddSnapshotLeaseAsync(string holder, string key, CancellationToken ct)
    {
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        await using var cmd = Command(c, "INSERT INTO snapshot_leases(holder, key) VALUES ($h, $k) ON CONFLICT DO NOTHING;", ("$h", holder), ("$k", key));
        await cmd.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
    }

    public async Task RemoveSnapshotLeasesAsync(string holder, CancellationToken ct)
    {
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        await using var cmd = Command(c, "DELETE FROM snapshot_leases WHERE holder = $h;", ("$h", holder));
        await cmd.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
    }

    public async Task<IReadOnlyList<string>> LeasedSnapshotsAsync(CancellationToken ct)
    {
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        await using var cmd = Command(c, "SELECT DISTINCT key FROM snapshot_leases;");
        await using var r = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
        var keys = new List<string>();
        while (await r.ReadAsync(ct).ConfigureAwait(false))
        {
            keys.Add(r.GetString(0));
        }

        return keys;
    }

    private static async Task<ImageRecord?> ReadImageAsync(SqliteConnection c, string id, CancellationToken ct)
    {
        ImageRecord? image;
        await using (var cmd = Command(c, "SELECT id, manifest_digest, target_digest, target_media_type, chain_id, size, created_at, layer_chain_ids FROM images WHERE id = $id;", ("$id", id)))
        await using (var r = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false))
        {
            if (!await r.ReadAsync(ct).ConfigureAwait(false))
            {
                return null;
            }

            image = new ImageRecord(
                Digest.Parse(r.GetString(0)), Digest.Parse(r.GetString(1)), Digest.Parse(r.GetString(2)), r.GetString(3),
                r.IsDBNull(4) ? null : r.GetString(4), r.GetInt64(5),
                DateTimeOffset.Parse(r.GetString(6), CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind),
                [], [], [], JsonSerializer.Deserialize(r.GetString(7), RuntimeStoreJson.Default.ListString) ?? []);
        }

        var tags = new List<string>();
        var digests = new List<string>();
        await using (var cmd = Command(c, "SELECT ref, kind FROM image_refs WHERE image_id = $id ORDER BY ref;", ("$id", id)))
        await using (var r = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false))
        {
            while (await r.ReadAsync(ct).ConfigureAwait(false))
            {
                (r.GetString(1) == "tag" ? tags : digests).Add(r.GetString(0));
            }
        }

        var blobs = new List<Digest>();
        await using (var cmd = Command(c, "SELECT digest FROM image_blobs WHERE image_id = $id;", ("$id", id)))
        await using (var r = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false))
        {
            while (await r.ReadAsync(ct).ConfigureAwait(false))
            {
                blobs.Add(Digest.Parse(r.GetString(0)));
            }
        }

        return image with { RepoTags = tags, RepoDigests = digests, Blobs = blobs };
    }

    private static SnapshotRecord ReadSnapshot(SqliteDataReader r) => new(
        r.GetString(0), r.GetString(1), r.IsDBNull(2) ? null : r.GetString(2), r.GetInt64(3),
        DateTimeOffset.Parse(r.GetString(4), CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind));

    private static SqliteCommand Command(SqliteConnection c, string sql, params (string Name, object? Value)[] parameters)
    {
        var cmd = c.CreateCommand();
        cmd.CommandText = sql;
        foreach (var (name, value) in parameters)
        {
            cmd.Parameters.AddWithValue(name, value ?? DBNull.Value);
        }

        return cmd;
    }

    private static async Task Exec(SqliteConnection c, SqliteTransaction tx, string sql, CancellationToken ct, params (string Name, object? Value)[] parameters)
    {
        await using var cmd = Command(c, sql, parameters);
        cmd.Transaction = tx;
        await cmd.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
    }
}
