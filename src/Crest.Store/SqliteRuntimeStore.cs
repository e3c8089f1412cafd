using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;
using Crest.Core;
using Microsoft.Data.Sqlite;

namespace Crest.Store;

/// <summary>Sandboxes and containers as JSON documents keyed by ID, with the fields lists filter on as columns.</summary>
public sealed class SqliteRuntimeStore(MetadataStore store) : IRuntimeStore
{
    public Task PutSandboxAsync(SandboxRecord sandbox, CancellationToken ct) =>
        PutAsync("sandboxes", sandbox.Id, null, sandbox.State.ToString(), JsonSerializer.Serialize(sandbox, RuntimeStoreJson.Default.SandboxRecord), ct);

    public async Task<SandboxRecord?> GetSandboxAsync(string id, CancellationToken ct) =>
        await GetAsync("sandboxes", id, RuntimeStoreJson.Default.SandboxRecord, ct).ConfigureAwait(false);

    public Task<IReadOnlyList<SandboxRecord>> ListSandboxesAsync(CancellationToken ct) => ListAsync("sandboxes", RuntimeStoreJson.Default.SandboxRecord, ct);

    public Task DeleteSandboxAsync(string id, CancellationToken ct) => DeleteAsync("sandboxes", id, ct);

    public Task<bool> TryUpdateSandboxAsync(SandboxRecord sandbox, SandboxState expected, CancellationToken ct) =>
        UpdateIfAsync("sandboxes", sandbox.Id, sandbox.State.ToString(), expected.ToString(), JsonSerializer.Serialize(sandbox, RuntimeStoreJson.Default.SandboxRecord), ct);

    public Task<bool> TryUpdateContainerAsync(ContainerRecord container, ContainerState expected, CancellationToken ct) =>
        UpdateIfAsync("containers", container.Id, container.State.ToString(), expected.ToString(), JsonSerializer.Serialize(container, RuntimeStoreJson.Default.ContainerRecord), ct);

    public Task PutContainerAsync(ContainerRecord container, CancellationToken ct) =>
        PutAsync("containers", container.Id, container.SandboxId, container.State.ToString(), JsonSerializer.Serialize(container, RuntimeStoreJson.Default.ContainerRecord), ct);

    public Task<ContainerRecord?> GetContainerAsync(string id, CancellationToken ct) => GetAsync("containers", id, RuntimeStoreJson.Default.ContainerRecord, ct);

    public Task<IReadOnlyList<ContainerRecord>> ListContainersAsync(CancellationToken ct) => ListAsync("containers", RuntimeStoreJson.Default.ContainerRecord, ct);

    public Task DeleteContainerAsync(string id, CancellationToken ct) => DeleteAsync("containers", id, ct);

    private async Task PutAsync(string table, string id, string? sandboxId, string state, string document, CancellationToken ct)
    {
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        await using var cmd = c.CreateCommand();
        cmd.CommandText = table == "sandboxes"
            ? "INSERT INTO sandboxes(id, state, document) VALUES ($id, $state, $doc) ON CONFLICT(id) DO UPDATE SET state = $state, document = $doc;"
            : "INSERT INTO containers(id, sandbox_id, state, document) VALUES ($id, $sandbox, $state, $doc) ON CONFLICT(id) DO UPDATE SET state = $state, document = $doc;";
        cmd.Parameters.AddWithValue("$id", id);
        cmd.Parameters.AddWithValue("$state", state);
        cmd.Parameters.AddWithValue("$doc", document);
        if (sandboxId is not null)
        {
            cmd.Parameters.AddWithValue("$sandbox", sandboxId);
        }

        await cmd.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
    }

    private async Task<bool> UpdateIfAsync(string table, string id, string state, string expected, string document, CancellationToken ct)
    {
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        await using var cmd = c.CreateCommand();
        cmd.CommandText = $"UPDATE {table} SET state = $state, document = $doc WHERE id = $id AND state = $expected;";
        cmd.Parameters.AddWithValue("$id", id);
        cmd.Parameters.AddWithValue("$state", state);
        cmd.Parameters.AddWithValue("$expected", expected);
        cmd.Parameters.AddWithValue("$doc", document);
        return await cmd.ExecuteNonQueryAsync(ct).ConfigureAwait(false) == 1;
    }

    private async Task<T?> GetAsync<T>(string table, string id, JsonTypeInfo<T> type, CancellationToken ct)
        where T : class
    {
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        await using var cmd = c.CreateCommand();
        cmd.CommandText = $"SELECT document FROM {table} WHERE id = $id;";
        cmd.Parameters.AddWithValue("$id", id);
        var doc = (string?)await cmd.ExecuteScalarAsync(ct).ConfigureAwait(false);
        return doc is null ? null : JsonSerializer.Deserialize(doc, type);
    }

    private async Task<IReadOnlyList<T>> ListAsync<T>(string table, JsonTypeInfo<T> type, CancellationToken ct)
    {
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        await using var cmd = c.CreateCommand();
        cmd.CommandText = $"SELECT document FROM {table} ORDER BY rowid;";
        await using var r = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
        var list = new List<T>();
        while (await r.ReadAsync(ct).ConfigureAwait(false))
        {
            list.Add(JsonSerializer.Deserialize(r.GetString(0), type)!);
        }

        return list;
    }

    private async Task DeleteAsync(string table, string id, CancellationToken ct)
    {
        await using var c = await store.OpenConnectionAsync(ct).ConfigureAwait(false);
        await using var cmd = c.CreateCommand();
        cmd.CommandText = $"DELETE FROM {table} WHERE id = $id;";
        cmd.Parameters.AddWithValue("$id", id);
        await cmd.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
    }
}

/// <summary>The stored documents' JSON, generated at build time (crestd is a Native AOT binary); enums as their names.</summary>
[JsonSourceGenerationOptions(UseStringEnumConverter = true)]
[JsonSerializable(typeof(SandboxRecord))]
[JsonSerializable(typeof(ContainerRecord))]
[JsonSerializable(typeof(List<string>))]
internal sealed partial class RuntimeStoreJson : JsonSerializerContext;
