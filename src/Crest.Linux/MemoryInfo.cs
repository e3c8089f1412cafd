using System.Globalization;
using Crest.Core;

namespace Crest.Linux;

/// <summary>
/// The page cache's writeback state: bytes dirty or under writeback, and the kernel's background writeback threshold.
/// Below the threshold a write is a copy into memory: the kernel neither throttles the writer nor starts writing back.
/// </summary>
public sealed record DirtyPageCache(long DirtyBytes, long BackgroundThresholdBytes)
{
    /// <summary>Whether <paramref name="bytes"/> more dirty page cache stays under the background threshold.</summary>
    public bool Takes(long bytes) => bytes >= 0 && DirtyBytes + bytes < BackgroundThresholdBytes;
}

/// <summary>Reads /proc/meminfo.</summary>
public static class MemoryInfo
{
    /// <summary>MemAvailable of a /proc/meminfo text, in bytes (the kernel writes it in kB).</summary>
    public static long AvailableBytes(string meminfo) =>
        Field(meminfo, "MemAvailable") ?? throw new CrestException(ErrorKind.Internal, "/proc/meminfo has no MemAvailable line in kB (a kernel before 3.14?)");

    /// <summary>
    /// The page cache's writeback state from a /proc/meminfo text and the vm.dirty_background_bytes and
    /// vm.dirty_background_ratio settings: dirty is Dirty plus Writeback; the threshold is the bytes setting when it is
    /// set, else the ratio of the memory the kernel counts as dirtyable (free pages and the file LRU lists).
    /// </summary>
    public static DirtyPageCache DirtyPageCache(string meminfo, long backgroundBytes, int backgroundRatio)
    {
        long Need(string name) => Field(meminfo, name) ?? throw new CrestException(ErrorKind.Internal, $"/proc/meminfo has no {name} line in kB");
        var dirty = Need("Dirty") + Need("Writeback");
        var dirtyable = Need("MemFree") + Need("Active(file)") + Need("Inactive(file)");
        var threshold = backgroundBytes > 0 ? backgroundBytes : dirtyable / 100 * Math.Clamp(backgroundRatio, 0, 100);
        return new DirtyPageCache(dirty, threshold);
    }

    private static long? Field(string meminfo, string name)
    {
        ArgumentNullException.ThrowIfNull(meminfo);
        foreach (var line in meminfo.Split('\n'))
        {
            if (!line.StartsWith(name, StringComparison.Ordinal) || line.Length <= name.Length || line[name.Length] != ':')
            {
                continue;
            }

            var fields = line[(name.Length + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length == 2 && fields[1] == "kB" && long.TryParse(fields[0], NumberStyles.None, CultureInfo.InvariantCulture, out var kib))
            {
                return kib * 1024;
            }
        }

        return null;
    }
}
