using System.Globalization;
using Crest.Core;

namespace Crest.Linux;

/// <summary>Reads /proc/meminfo.</summary>
public static class MemoryInfo
{
    /// <summary>MemAvailable of a /proc/meminfo text, in bytes (the kernel writes it in kB).</summary>
    public static long AvailableBytes(string meminfo)
    {
        ArgumentNullException.ThrowIfNull(meminfo);
        foreach (var line in meminfo.Split('\n'))
        {
            if (!line.StartsWith("MemAvailable:", StringComparison.Ordinal))
            {
                continue;
            }

            var fields = line["MemAvailable:".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length == 2 && fields[1] == "kB" && long.TryParse(fields[0], NumberStyles.None, CultureInfo.InvariantCulture, out var kib))
            {
                return kib * 1024;
            }
        }

        throw new CrestException(ErrorKind.Internal, "/proc/meminfo has no MemAvailable line in kB (a kernel before 3.14?)");
    }
}
