using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Microsoft.AspNetCore.Http;
using Prometheus;

namespace Crest.Daemon.Metrics;

/// <summary>
/// GET /metrics in Prometheus's text format on <c>[metrics] address</c>, through prometheus-net (stable, MIT, no
/// OpenTelemetry SDK to carry). Crest records with System.Diagnostics.Metrics under meters named "Crest.*"; this
/// bridge gives each instrument a Prometheus metric of the same name (prometheus-net's own meter adapter would prefix
/// the meter's name and turn counters into gauges), and prometheus-net adds the process's metrics (CPU, memory, file
/// descriptors, threads, GC).
/// </summary>
internal static class MetricsEndpoint
{
    private static readonly double[] SecondsBuckets = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];
    private static readonly double[] BytesBuckets = [.. Enumerable.Range(0, 13).Select(i => Math.Pow(4, i) * 4096)]; // 4 KiB .. 64 GiB
    private static readonly ConcurrentDictionary<Instrument, Collector> Collectors = new();
    private static readonly List<Gauge> ObservedGauges = [];
    private static MeterListener? _listener;

    /// <summary>Starts the bridge once per process (a test host may start several daemons; they share the meters).</summary>
    public static void Configure()
    {
        if (Interlocked.CompareExchange(ref _listener, new MeterListener(), null) is not null)
        {
            return;
        }

        Prometheus.Metrics.SuppressDefaultMetrics(new SuppressDefaultMetricOptions { SuppressMeters = true, SuppressEventCounters = true, SuppressDebugMetrics = true });
        var listener = _listener!;
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name.StartsWith("Crest.", StringComparison.Ordinal))
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<int>((i, v, tags, _) => Record(i, v, tags));
        listener.SetMeasurementEventCallback<long>((i, v, tags, _) => Record(i, v, tags));
        listener.SetMeasurementEventCallback<double>((i, v, tags, _) => Record(i, v, tags));
        listener.Start();
        Prometheus.Metrics.DefaultRegistry.AddBeforeCollectCallback(() =>
        {
            // A gauge holds only what its callback reports now: a state no object is in any more disappears.
            lock (ObservedGauges)
            {
                foreach (var gauge in ObservedGauges)
                {
                    foreach (var labels in gauge.GetAllLabelValues().ToList())
                    {
                        gauge.RemoveLabelled(labels);
                    }
                }
            }

            listener.RecordObservableInstruments();
        });
    }

    private static void Record(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        var sorted = tags.ToArray().OrderBy(t => t.Key, StringComparer.Ordinal).ToArray();
        var values = sorted.Select(t => t.Value?.ToString() ?? "").ToArray();
        try
        {
            var collector = Collectors.GetOrAdd(instrument, i => Create(i, [.. sorted.Select(t => t.Key)]));
            switch (collector)
            {
                case Counter c:
                    c.WithLabels(values).Inc(value);
                    break;
                case Histogram h:
                    h.WithLabels(values).Observe(value);
                    break;
                case Gauge g:
                    g.WithLabels(values).Set(value);
                    break;
            }
        }
        catch (ArgumentException)
        {
            // A measurement whose tags differ from the instrument's first: Prometheus needs fixed label names; it is dropped.
        }
    }

    private static Collector Create(Instrument instrument, string[] labels)
    {
        var help = instrument.Description ?? instrument.Name;
        switch (instrument)
        {
            case Counter<int> or Counter<long> or Counter<double>:
                return Prometheus.Metrics.CreateCounter(instrument.Name, help, labels);
            case Histogram<int> or Histogram<long> or Histogram<double>:
                return Prometheus.Metrics.CreateHistogram(instrument.Name, help, new HistogramConfiguration
                {
                    LabelNames = labels,
                    Buckets = instrument.Unit == "By" ? BytesBuckets : SecondsBuckets,
                });
            default:
                var gauge = Prometheus.Metrics.CreateGauge(instrument.Name, help, labels);
                if (instrument.IsObservable)
                {
                    lock (ObservedGauges)
                    {
                        ObservedGauges.Add(gauge);
                    }
                }

                return gauge;
        }
    }

    public static async Task HandleAsync(HttpContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (context.Request.Path != "/metrics" || !HttpMethods.IsGet(context.Request.Method))
        {
            context.Response.StatusCode = StatusCodes.Status404NotFound;
            return;
        }

        context.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
        await Prometheus.Metrics.DefaultRegistry.CollectAndExportAsTextAsync(context.Response.Body, context.RequestAborted).ConfigureAwait(false);
    }
}
