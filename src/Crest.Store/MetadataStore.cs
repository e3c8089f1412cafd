using System.Globalization;
using Crest.Core;
using Microsoft.Data.Sqlite;

namespace Crest.Store;

/// <summary>
/// Crest's metadata database: one SQLite file in WAL mode, schema brought up to date on open.
/// Connections are opened per operation (SQLite pools them); <see cref="Dispose"/> closes the pooled ones, so a stopped
/// crestd holds the database file no longer.
/// </summary>
public sealed class MetadataStore : IDisposable
{
    private readonly string _connectionString;

    private MetadataStore(string path, int schemaVersion)
    {
        Path = path;
        SchemaVersion = schemaVersion;
        _connectionString = ConnectionString(path);
    }

    public string Path { get; }

    /// <summary>Closes this store's pooled connections (connections in use close when they are returned).</summary>
    public void Dispose()
    {
        using var connection = new SqliteConnection(_connectionString);
        SqliteConnection.ClearPool(connection);
    }

    public int SchemaVersion { get; }

    /// <summary>Opens (creating if needed) the store at <paramref name="path"/> and applies pending migrations.</summary>
    public static async Task<MetadataStore> OpenAsync(string path, TimeProvider time, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(time);
        var dir = System.IO.Path.GetDirectoryName(path) ?? throw new ArgumentException($"no directory in {path}", nameof(path));
        Directory.CreateDirectory(dir);
        try
        {
            await using var connection = new SqliteConnection(ConnectionString(path));
            await connection.OpenAsync(ct).ConfigureAwait(false);
            await ExecuteAsync(connection, "PRAGMA journal_mode=WAL;", ct).ConfigureAwait(false);
            var version = Convert.ToInt32(await ScalarAsync(connection, "PRAGMA user_version;", ct).ConfigureAwait(false), CultureInfo.InvariantCulture);
            if (version > Migrations.Latest)
            {
                throw new CrestException(ErrorKind.FailedPrecondition,
                    $"the metadata store {path} has schema version {version}, newer than this crestd knows ({Migrations.Latest}); run the crestd that wrote it, or a newer one");
            }

            for (var step = version; step < Migrations.Latest; step++)
            {
                await using var tx = (SqliteTransaction)await connection.BeginTransactionAsync(ct).ConfigureAwait(false);
                await ExecuteAsync(connection, Migrations.Steps[step], ct, tx).ConfigureAwait(false);
                await ExecuteAsync(connection, $"PRAGMA user_version = {step + 1};", ct, tx).ConfigureAwait(false);
                await tx.CommitAsync(ct).ConfigureAwait(false);
            }

            var now = time.GetUtcNow().ToString("O", CultureInfo.InvariantCulture);
            await ExecuteAsync(connection,
                "INSERT INTO store_info(key, value) VALUES ('created_at', $now) ON CONFLICT(key) DO NOTHING;" +
                "INSERT INTO store_info(key, value) VALUES ('opened_count', '1') ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1;",
                ct, parameters: ("$now", now)).ConfigureAwait(false);
            return new MetadataStore(path, Migrations.Latest);
        }
        catch (SqliteException e)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"the metadata store {path} cannot be opened: {e.Message}; check the file and its directory, or move a damaged file aside", e);
        }
    }

    /// <summary>A value from store_info, or null.</summary>
    public async Task<string?> GetInfoAsync(string key, CancellationToken ct)
    {
        await using var connection = await OpenConnectionAsync(ct).ConfigureAwait(false);
        return (string?)await ScalarAsync(connection, "SELECT value FROM store_info WHERE key = $key;", ct, ("$key", key)).ConfigureAwait(false);
    }

    public async Task<SqliteConnection> OpenConnectionAsync(CancellationToken ct)
    {
        var connection = new SqliteConnection(_connectionString);
        await connection.OpenAsync(ct).ConfigureAwait(false);
        // A writer finding another's write lock waits in SQLite's busy handler (sleeps of 1 to 100 ms) instead of getting
        // SQLITE_BUSY, which Microsoft.Data.Sqlite retries only after a 150 ms sleep: two writes racing (a stop and the
        // exit watcher recording the same exit) cost the second 150 ms that way.
        // In WAL mode, synchronous=NORMAL syncs at checkpoints instead of at every commit (FULL): a crestd killed at any
        // point loses nothing, and a power loss may roll back the last commits but never leaves the file inconsistent.
        // What runs does not survive a power loss either, and recovery reconciles the records with it at start; a commit's
        // fsync cost 1.3-1.8 ms here, on every call that changes a pod, a container or an image.
        await ExecuteAsync(connection, ConnectionSettings, ct).ConfigureAwait(false);
        return connection;
    }

    private const string ConnectionSettings = "PRAGMA busy_timeout = 30000; PRAGMA synchronous = NORMAL;";

    private static string ConnectionString(string path) => new SqliteConnectionStringBuilder
    {
        DataSource = path,
        Mode = SqliteOpenMode.ReadWriteCreate,
        Cache = SqliteCacheMode.Private,
        Pooling = true,
        DefaultTimeout = 30,
        ForeignKeys = true,
    }.ToString();

    private static async Task ExecuteAsync(SqliteConnection connection, string sql, CancellationToken ct,
        SqliteTransaction? tx = null, params (string Name, object Value)[] parameters)
    {
        await using var command = connection.CreateCommand();
        command.CommandText = sql;
        command.Transaction = tx;
        foreach (var (name, value) in parameters)
        {
            command.Parameters.AddWithValue(name, value);
        }

        await command.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
    }

    private static async Task<object?> ScalarAsync(SqliteConnection connection, string sql, CancellationToken ct,
        params (string Name, object Value)[] parameters)
    {
        await using var command = connection.CreateCommand();
        command.CommandText = sql;
        foreach (var (name, value) in parameters)
        {
            command.Parameters.AddWithValue(name, value);
        }

        return await command.ExecuteScalarAsync(ct).ConfigureAwait(false);
    }
}
