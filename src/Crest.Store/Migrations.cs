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
    ];

    public static int Latest => Steps.Count;
}
