using System.Diagnostics.Metrics;
using Crest.Core;

namespace Crest.Daemon.Metrics;

/// <summary>Pods and containers by state (meter "Crest.Runtime"), read from the store when Prometheus scrapes.</summary>
internal sealed class ObjectMetrics : IDisposable
{
    private readonly Meter _meter = new("Crest.Runtime");

    public ObjectMetrics(IRuntimeStore store)
    {
        ArgumentNullException.ThrowIfNull(store);
        // The store's reads complete synchronously (SQLite); a scrape is rare and short.
        _meter.CreateObservableGauge("crest_pods", () => store.ListSandboxesAsync(CancellationToken.None).GetAwaiter().GetResult()
            .GroupBy(s => s.State)
            .Select(g => new Measurement<int>(g.Count(), new KeyValuePair<string, object?>("state", g.Key.ToString().ToLowerInvariant()))),
            null, "Pod sandboxes by state");
        _meter.CreateObservableGauge("crest_containers", () => store.ListContainersAsync(CancellationToken.None).GetAwaiter().GetResult()
            .GroupBy(c => c.State)
            .Select(g => new Measurement<int>(g.Count(), new KeyValuePair<string, object?>("state", g.Key.ToString().ToLowerInvariant()))),
            null, "Containers by state");
    }

    public void Dispose() => _meter.Dispose();
}
