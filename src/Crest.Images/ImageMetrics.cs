using System.Diagnostics.Metrics;

namespace Crest.Images;

/// <summary>Pull metrics (System.Diagnostics.Metrics, meter "Crest.Images"): one transfer per image, however many callers wait on it.</summary>
internal static class ImageMetrics
{
    private static readonly Meter Meter = new("Crest.Images");
    private static readonly Counter<long> Pulls = Meter.CreateCounter<long>("crest_image_pulls_total", null, "Image pulls by result (ok, error)");
    private static readonly Histogram<double> Duration = Meter.CreateHistogram<double>("crest_image_pull_duration_seconds", "s", "Time of an image pull, manifest to unpacked layers");
    private static readonly Histogram<long> Size = Meter.CreateHistogram<long>("crest_image_pull_size_bytes", "By", "Size of pulled images (their blobs, compressed)");

    public static void Pulled(TimeSpan elapsed, long bytes)
    {
        Pulls.Add(1, new KeyValuePair<string, object?>("result", "ok"));
        Duration.Record(elapsed.TotalSeconds);
        Size.Record(bytes);
    }

    public static void Failed() => Pulls.Add(1, new KeyValuePair<string, object?>("result", "error"));
}
