using Crest.Core;
using Crest.Runtime;

namespace Crest.UnitTests.Fakes;

/// <summary>A pod network without CNI: each ADD hands out the next address; DEL of what is not attached is fine, as CNI asks.</summary>
public sealed class FakeNetwork : INetwork
{
    private readonly Lock _gate = new();
    private readonly Dictionary<string, string> _attached = new(StringComparer.Ordinal);
    private int _next = 1;

    /// <summary>When set, ADD fails with it.</summary>
    public Exception? AddFailure { get; set; }

    public IReadOnlyCollection<string> Attached
    {
        get
        {
            lock (_gate)
            {
                return [.. _attached.Keys];
            }
        }
    }

    public Task<CniAttachment> AddAsync(string sandboxId, string netns, PodSpec pod, CancellationToken ct)
    {
        if (AddFailure is { } failure)
        {
            return Task.FromException<CniAttachment>(failure);
        }

        string ip;
        lock (_gate)
        {
            ip = $"10.88.0.{++_next}";
            _attached[sandboxId] = ip;
        }

        return Task.FromResult(new CniAttachment("fake", [ip], $$"""{"ips":[{"address":"{{ip}}/16"}]}""", """{"name":"fake"}"""));
    }

    public Task DelAsync(string sandboxId, string? netns, PodSpec pod, string? cachedResult, string? configUsedAtAdd, CancellationToken ct)
    {
        lock (_gate)
        {
            _attached.Remove(sandboxId);
        }

        return Task.CompletedTask;
    }
}
