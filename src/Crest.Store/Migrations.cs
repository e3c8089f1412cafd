namespace Crest.Store;

/// <summary>
/// The schema, one step per version, applied in order inside a transaction. A step is never edited
/// once released: a change is a new step. PRAGMA user_version records the version reached.
/// </summary>
internal static class Migrations
{
    public static IReadOnlyList<string> Steps { get; } =
    [
        // 1: facts about this store (when it was made, how often a daemon opened it).
        """
        CREATE TABLE store_info (
            key   TEXT PRIMARY KEY NOT NULL,
            value TEXT NOT NULL
        ) STRICT;
        """,

        // 2: images, their references and blobs; committed snapshots and who holds them.
        """
        CREATE TABLE images (
            id                TEXT PRIMARY KEY NOT NULL,
            manifest_digest   TEXT NOT NULL,
            target_digest     TEXT NOT NULL,
            target_media_type TEXT NOT NULL,
            chain_id          TEXT,
            size              INTEGER NOT NULL,
            created_at        TEXT NOT NULL,
            layer_chain_ids   TEXT NOT NULL
        ) STRICT;
        CREATE TABLE image_refs (
            ref      TEXT PRIMARY KEY NOT NULL,
            kind     TEXT NOT NULL CHECK (kind IN ('tag', 'digest')),
            image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
        ) STRICT;
        CREATE INDEX image_refs_by_image ON image_refs(image_id);
        CREATE TABLE image_blobs (
            image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            digest   TEXT NOT NULL,
            PRIMARY KEY (image_id, digest)
        ) STRICT;
        CREATE TABLE snapshots (
            key        TEXT PRIMARY KEY NOT NULL,
            directory  TEXT NOT NULL UNIQUE,
            parent     TEXT,
            size       INTEGER NOT NULL,
            created_at TEXT NOT NULL
        ) STRICT;
        CREATE TABLE snapshot_leases (
            holder TEXT NOT NULL,
            key    TEXT NOT NULL,
            PRIMARY KEY (holder, key)
        ) STRICT;
        """,

        // 3: pod sandboxes and containers, as JSON documents with the columns lists filter on.
        """
        CREATE TABLE sandboxes (
            id       TEXT PRIMARY KEY NOT NULL,
            state    TEXT NOT NULL,
            document TEXT NOT NULL
        ) STRICT;
        CREATE TABLE containers (
            id         TEXT PRIMARY KEY NOT NULL,
            sandbox_id TEXT NOT NULL,
            state      TEXT NOT NULL,
            document   TEXT NOT NULL
        ) STRICT;
        CREATE INDEX containers_by_sandbox ON containers(sandbox_id);
        """,
    ];

    public static int Latest => Steps.Count;
}
