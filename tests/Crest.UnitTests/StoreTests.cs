using Crest.Core;
using Crest.Store;
using Crest.TestKit;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Time.Testing;

namespace Crest.UnitTests;

public class MetadataStoreTests
{
    [Fact]
    public async Task Opening_creates_the_schema_and_reopening_keeps_it()
    {
        using var dir = new TempDir();
        var time = new FakeTimeProvider(new DateTimeOffset(2026, 11, 28, 12, 0, 0, TimeSpan.Zero));
        var ct = TestContext.Current.CancellationToken;

        var first = await MetadataStore.OpenAsync(dir.Combine("crest.db"), time, ct);
        time.Advance(TimeSpan.FromHours(1));
        var second = await MetadataStore.OpenAsync(dir.Combine("crest.db"), time, ct);

        Assert.Equal(first.SchemaVersion, second.SchemaVersion);
        Assert.Equal("2026-11-28T12:00:00.0000000+00:00", await second.GetInfoAsync("created_at", ct));
        Assert.Equal("2", await second.GetInfoAsync("opened_count", ct));
    }

    [Fact]
    public async Task The_store_runs_in_wal_mode()
    {
        using var dir = new TempDir();
        var store = await MetadataStore.OpenAsync(dir.Combine("crest.db"), TimeProvider.System, TestContext.Current.CancellationToken);

        await using var connection = await store.OpenConnectionAsync(TestContext.Current.CancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = "PRAGMA journal_mode;";
        Assert.Equal("wal", await command.ExecuteScalarAsync(TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task Every_connection_commits_without_an_fsync_each_time_which_wal_mode_keeps_consistent()
    {
        using var dir = new TempDir();
        var ct = TestContext.Current.CancellationToken;
        using var store = await MetadataStore.OpenAsync(dir.Combine("crest.db"), TimeProvider.System, ct);

        // Twice: a pooled connection handed out again keeps the setting.
        for (var i = 0; i < 2; i++)
        {
            await using var connection = await store.OpenConnectionAsync(ct);
            await using var command = connection.CreateCommand();
            command.CommandText = "PRAGMA synchronous;";
            // 1: NORMAL (SQLite's default, 2, is FULL: an fsync per commit).
            Assert.Equal(1L, await command.ExecuteScalarAsync(ct));
        }
    }

    [Fact]
    public async Task A_write_waiting_for_anothers_lock_waits_in_sqlites_busy_handler_and_lands_once_it_is_released()
    {
        using var dir = new TempDir();
        var ct = TestContext.Current.CancellationToken;
        using var store = await MetadataStore.OpenAsync(dir.Combine("crest.db"), TimeProvider.System, ct);
        var runtime = new SqliteRuntimeStore(store);
        await using var holder = await store.OpenConnectionAsync(ct);
        await using (var begin = holder.CreateCommand())
        {
            begin.CommandText = "BEGIN IMMEDIATE;";
            await begin.ExecuteNonQueryAsync(ct);
        }

        var write = Task.Run(() => runtime.PutSandboxAsync(RuntimeStoreConformance.Sandbox("s1"), ct), ct);
        await Task.Delay(40, ct);
        await using (var commit = holder.CreateCommand())
        {
            commit.CommandText = "COMMIT;";
            await commit.ExecuteNonQueryAsync(ct);
        }

        await write;
        Assert.NotNull(await runtime.GetSandboxAsync("s1", ct));

        // The waiting was SQLite's busy handler (sleeps of 1 to 100 ms), not Microsoft.Data.Sqlite's retry after a
        // 150 ms sleep: every connection the store hands out has a busy timeout. (How soon the write went on is the
        // bench's to measure; a wall-clock bound here failed on a loaded machine.)
        await using var connection = await store.OpenConnectionAsync(ct);
        await using var pragma = connection.CreateCommand();
        pragma.CommandText = "PRAGMA busy_timeout;";
        Assert.True(Convert.ToInt64(await pragma.ExecuteScalarAsync(ct), System.Globalization.CultureInfo.InvariantCulture) >= 1000);
    }

    [Fact]
    public async Task A_store_from_a_newer_crestd_is_refused_and_left_untouched()
    {
        using var dir = new TempDir();
        var path = dir.Combine("crest.db");
        await using (var c = new SqliteConnection($"Data Source={path}"))
        {
            await c.OpenAsync(TestContext.Current.CancellationToken);
            await using var cmd = c.CreateCommand();
            cmd.CommandText = "PRAGMA user_version = 99;";
            await cmd.ExecuteNonQueryAsync(TestContext.Current.CancellationToken);
        }

        SqliteConnection.ClearAllPools();
        var e = await Assert.ThrowsAsync<CrestException>(() => MetadataStore.OpenAsync(path, TimeProvider.System, TestContext.Current.CancellationToken));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains("schema version 99, newer than this crestd knows", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_file_that_is_not_a_database_is_an_error_naming_it()
    {
        using var dir = new TempDir();
        var path = dir.Combine("crest.db");
        await File.WriteAllTextAsync(path, new string('x', 4096), TestContext.Current.CancellationToken);

        var e = await Assert.ThrowsAsync<CrestException>(() => MetadataStore.OpenAsync(path, TimeProvider.System, TestContext.Current.CancellationToken));

        Assert.Contains(path, e.Message, StringComparison.Ordinal);
    }
}
