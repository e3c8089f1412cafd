using Crest.Core;

namespace Crest.UnitTests.Fakes;

/// <summary>The runtime store in memory: records listed in the order they were first put, as the SQLite store lists by rowid.</summary>
public sealed class MemoryRuntimeStore : IRuntimeStore
{
    private readonly Lock _gate = new();
    private readonly List<SandboxRecord> _sandboxes = [];
    private readonly List<ContainerRecord> _containers = [];

    public Task PutSandboxAsync(SandboxRecord sandbox, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(sandbox);
        lock (_gate)
        {
            Put(_sandboxes, sandbox, s => s.Id == sandbox.Id);
        }

        return Task.CompletedTask;
    }

    public Task<SandboxRecord?> GetSandboxAsync(string id, CancellationToken ct)
    {
        lock (_gate)
        {
            return Task.FromResult(_sandboxes.FirstOrDefault(s => s.Id == id));
        }
    }

    public Task<IReadOnlyList<SandboxRecord>> ListSandboxesAsync(CancellationToken ct)
    {
        lock (_gate)
        {
            return Task.FromResult<IReadOnlyList<SandboxRecord>>([.. _sandboxes]);
        }
    }

    public Task DeleteSandboxAsync(string id, CancellationToken ct)
    {
        lock (_gate)
        {
            _sandboxes.RemoveAll(s => s.Id == id);
        }

        return Task.CompletedTask;
    }

    public Task PutContainerAsync(ContainerRecord container, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(container);
        lock (_gate)
        {
            Put(_containers, container, c => c.Id == container.Id);
        }

        return Task.CompletedTask;
    }

    public Task<ContainerRecord?> GetContainerAsync(string id, CancellationToken ct)
    {
        lock (_gate)
        {
            return Task.FromResult(_containers.FirstOrDefault(c => c.Id == id));
        }
    }

    public Task<IReadOnlyList<ContainerRecord>> ListContainersAsync(CancellationToken ct)
    {
        lock (_gate)
        {
            return Task.FromResult<IReadOnlyList<ContainerRecord>>([.. _containers]);
        }
    }

    public Task DeleteContainerAsync(string id, CancellationToken ct)
    {
        lock (_gate)
        {
            _containers.RemoveAll(c => c.Id == id);
        }

        return Task.CompletedTask;
    }

    private static void Put<T>(List<T> list, T record, Predicate<T> same)
    {
        var at = list.FindIndex(same);
        if (at >= 0)
        {
            list[at] = record;
        }
        else
        {
            list.Add(record);
        }
    }
}
