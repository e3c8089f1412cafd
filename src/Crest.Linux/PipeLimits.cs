using System.Globalization;

namespace Crest.Linux;

/// <summary>
/// Whether CRIU's lazy page server can size its pipe on this node. CRIU 4.2's page server (page-xfer.c,
/// <c>page_server_serve</c>) calls <c>pipe_read_dest_init</c>, which sets its pipe to 819 pages (3,354,624 bytes) with
/// F_SETPIPE_SZ and, when that fails, returns before it opens /dev/null for the bytes it skips; the caller ignores the
/// failure, so the first page request fails with <c>page-pipe: splice: -1: Bad file descriptor</c>. F_SETPIPE_SZ past
/// <c>fs.pipe-max-size</c> needs CAP_SYS_RESOURCE, which a root inside a container often lacks.
/// </summary>
public static class PipeLimits
{
    /// <summary>The pipe size CRIU's page server asks for: PIPE_MAX_SIZE pages (8 pages of 40-byte pipe buffers) of 4 KiB.</summary>
    public const long PageServerPipeBytes = 8L * 4096 / 40 * 4096;

    private const int CapSysResource = 24;

    /// <summary>Why the lazy page server would fail here, or null when it would not.</summary>
    public static string? PageServerProblem() =>
        PageServerProblem(ReadOrNull("/proc/sys/fs/pipe-max-size"), ReadOrNull("/proc/self/status"));

    internal static string? PageServerProblem(string? pipeMaxSize, string? status)
    {
        if (HasCapability(status, CapSysResource))
        {
            return null;
        }

        if (!long.TryParse(pipeMaxSize?.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var max))
        {
            return "CRIU's lazy page server needs pipes of " + PageServerPipeBytes.ToString(CultureInfo.InvariantCulture)
                + " bytes, and /proc/sys/fs/pipe-max-size could not be read (nor does this process hold CAP_SYS_RESOURCE)";
        }

        return max >= PageServerPipeBytes
            ? null
            : string.Create(CultureInfo.InvariantCulture,
                $"CRIU's lazy page server sizes its pipe to {PageServerPipeBytes} bytes, above fs.pipe-max-size ({max}), and without CAP_SYS_RESOURCE that fails: CRIU 4.2 ignores the failure and the first page request fails with \"page-pipe: splice: -1: Bad file descriptor\"; raise it: sysctl -w fs.pipe-max-size=4194304");
    }

    private static bool HasCapability(string? status, int capability)
    {
        foreach (var line in (status ?? "").Split('\n'))
        {
            if (line.StartsWith("CapEff:", StringComparison.Ordinal)
                && ulong.TryParse(line["CapEff:".Length..].Trim(), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var mask))
            {
                return (mask & (1UL << capability)) != 0;
            }
        }

        return false;
    }

    private static string? ReadOrNull(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }
}
