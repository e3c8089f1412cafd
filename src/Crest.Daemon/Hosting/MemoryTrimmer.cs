using System.Diagnostics.Metrics;
using System.Runtime;
using Crest.Linux;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Crest.Daemon.Hosting;

/// <summary>
/// When to give memory back: after calls were made, with none in flight, once crestd's resident memory has grown
/// <see cref="GrowthBytes"/> past what it was after the last trim. A kubelet's steady polling does not grow it, so it
/// does not trim; a burst of pod starts, a pull or a checkpoint does, and is trimmed within one check after it ends.
/// </summary>
internal static class MemoryTrimPolicy
{
    public const long GrowthBytes = 8L << 20;

    public static readonly TimeSpan CheckInterval = TimeSpan.FromSeconds(5);

    public static bool ShouldTrim(long residentBytes, long residentAfterLastTrim, long callsSinceLastTrim, long callsInFlight) =>
        callsSinceLastTrim > 0 && callsInFlight == 0 && residentBytes - residentAfterLastTrim >= GrowthBytes;
}

/// <summary>
/// Gives back what a burst of work left behind: a full, compacting, decommitting collection (large objects too), then
/// glibc's free pages. Without it crestd stays 20 MiB or more above where it started after a soak: the GC does not
/// run while nothing allocates, and keeps the heap it grew. Counted in crest_daemon_memory_trims_total.
/// </summary>
internal sealed partial class MemoryTrimmer(CallActivity activity, TimeProvider time, ILogger<MemoryTrimmer> logger) : BackgroundService
{
    private static readonly Meter Meter = new("Crest.Daemon");
    private static readonly Counter<long> Trims = Meter.CreateCounter<long>("crest_daemon_memory_trims_total", null, "Times crestd gave memory back after a burst of work");
    private static readonly Counter<long> Released = Meter.CreateCounter<long>("crest_daemon_memory_trimmed_bytes_total", "By", "Resident bytes those trims gave back");

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(MemoryTrimPolicy.CheckInterval, time);
        try
        {
            // Start-up (configuration, the store's migrations, recovery, image GC, Kestrel) is a burst of its own: what
            // it allocated once is given back at the first check, so the idle daemon holds only what serving needs.
            await timer.WaitForNextTickAsync(stoppingToken);
            var startup = ProcessMemory.ResidentBytes();
            Trim();
            var afterLastTrim = ProcessMemory.ResidentBytes();
            var callsAtLastTrim = activity.Started;
            Trimmed(logger, startup >> 20, afterLastTrim >> 20);
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                var resident = ProcessMemory.ResidentBytes();
                var calls = activity.Started;
                if (!MemoryTrimPolicy.ShouldTrim(resident, afterLastTrim, calls - callsAtLastTrim, activity.InFlight))
                {
                    // Resident memory that fell (the GC gave some back by itself) is the new floor.
                    afterLastTrim = Math.Min(afterLastTrim, resident);
                    continue;
                }

                Trim();
                afterLastTrim = ProcessMemory.ResidentBytes();
                callsAtLastTrim = calls;
                Trims.Add(1);
                Released.Add(Math.Max(0, resident - afterLastTrim));
                Trimmed(logger, resident >> 20, afterLastTrim >> 20);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    internal static void Trim()
    {
        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        ProcessMemory.TrimNativeHeap();
    }

    [LoggerMessage(1, LogLevel.Debug, "gave memory back after a burst of calls: resident {BeforeMiB} MiB -> {AfterMiB} MiB")]
    private static partial void Trimmed(ILogger logger, long beforeMiB, long afterMiB);
}
