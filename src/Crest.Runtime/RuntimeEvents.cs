using System.Threading.Channels;
using Crest.Core;

namespace Crest.Runtime;

public enum LifecycleEvent
{
    Created,
    Started,
    Stopped,
    Deleted,
}

/// <summary>A container (or sandbox: the infra container) changed state.</summary>
public sealed record RuntimeEvent(string ContainerId, string SandboxId, LifecycleEvent Kind, DateTimeOffset At);

/// <summary>
/// Fans lifecycle events out to every subscriber (CRI GetContainerEvents streams, the kubelet's evented PLEG).
/// A subscriber that falls behind loses its oldest events rather than slowing the runtime down.
/// </summary>
public sealed class RuntimeEvents(TimeProvider time)
{
    private readonly Lock _gate = new();
    private readonly List<Channel<RuntimeEvent>> _subscribers = [];

    public void Publish(string containerId, string sandboxId, LifecycleEvent kind)
    {
        var e = new RuntimeEvent(containerId, sandboxId, kind, time.GetUtcNow());
        lock (_gate)
        {
            foreach (var s in _subscribers)
            {
                s.Writer.TryWrite(e);
            }
        }
    }

    /// <summary>Events from now on, until <paramref name="ct"/> ends the subscription.</summary>
    public async IAsyncEnumerable<RuntimeEvent> SubscribeAsync([System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        var channel = Channel.CreateBounded<RuntimeEvent>(new BoundedChannelOptions(1024) { FullMode = BoundedChannelFullMode.DropOldest });
        lock (_gate)
        {
            _subscribers.Add(channel);
        }

        try
        {
            await foreach (var e in channel.Reader.ReadAllAsync(ct).ConfigureAwait(false))
            {
                yield return e;
            }
        }
        finally
        {
            lock (_gate)
            {
                _subscribers.Remove(channel);
            }
        }
    }
}
