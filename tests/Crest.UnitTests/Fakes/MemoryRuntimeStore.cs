using Crest.Core;

namespace Crest.UnitTests.Fakes;

/// <summary>The runtime store in memory: records listed in the order they were first put, as the SQLite store lists by rowid.</summary>
public sealed class MemoryRuntimeStore : IRuntimeStore
{
    private readonly Table<SandboxRecord> _sandboxes = new(s => s.Id);
    private readonly Table<ContainerRecord> _containers = new(c => c.Id);

    public Task PutSandboxAsync(SandboxRecord sandbox, CancellationToken ct) => _sandboxes.Put(sandbox);

    public Task<SandboxRecord?> GetSandboxAsync(string id, CancellationToken ct) => _sandboxes.Get(id);

    public Task<IReadOnlyList<SandboxRecord>> ListSandboxesAsync(CancellationToken ct) => _sandboxes.List();

    public Task DeleteSandboxAsync(string id, CancellationToken ct) => _sandboxes.Delete(id);

    public Task<bool> TryUpdateSandboxAsync(SandboxRecord sandbox, SandboxState expected, CancellationToken ct) =>
        _sandboxes.UpdateIf(sandbox, s => s.State == expected);

    public Task<bool> TryUpdateContainerAsync(ContainerRecord container, ContainerState expected, CancellationToken ct) =>
        _containers.UpdateIf(container, c => c.State == expected);

    public Task PutContainerAsync(ContainerRecord container, CancellationToken ct) => _containers.Put(container);

    public Task<ContainerRecord?> GetContainerAsync(string id, CancellationToken ct) => _containers.Get(id);

    public Task<IReadOnlyList<ContainerRecord>> ListContainersAsync(CancellationToken ct) => _containers.List();

    public Task DeleteContainerAsync(string id, CancellationToken ct) => _containers.Delete(id);

    /// <summary>One kind of record by id; a put of a known id replaces it in place.</summary>
    private sealed class Table<T>(Func<T, string> idOf)
        where T : class
    {
        private readonly Lock _gate = new();
        private readonly List<T> _rows = [];

        public Task Put(T record)
        {
            ArgumentNullException.ThrowIfNull(record);
            lock (_gate)
            {
                var at = _rows.FindIndex(r => idOf(r) == idOf(record));
                if (at >= 0)
                {
                    _rows[at] = record;
                }
                else
                {
                    _rows.Add(record);
                }
            }

            return Task.CompletedTask;
        }

        public Task<bool> UpdateIf(T record, Func<T, bool> current)
        {
            ArgumentNullException.ThrowIfNull(record);
            lock (_gate)
            {
                var at = _rows.FindIndex(r => idOf(r) == idOf(record));
                if (at < 0 || !current(_rows[at]))
                {
                    return Task.FromResult(false);
                }

                _rows[at] = record;
                return Task.FromResult(true);
            }
        }

        public Task<T?> Get(string id)
        {
            lock (_gate)
            {
                return Task.FromResult(_rows.FirstOrDefault(r => idOf(r) == id));
            }
        }

        public Task<IReadOnlyList<T>> List()
        {
            lock (_gate)
            {
                return Task.FromResult<IReadOnlyList<T>>([.. _rows]);
            }
        }

        public Task Delete(string id)
        {
            lock (_gate)
            {
                _rows.RemoveAll(r => idOf(r) == id);
            }

            return Task.CompletedTask;
        }
    }
}
