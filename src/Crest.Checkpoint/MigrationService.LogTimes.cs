using System.Globalization;

namespace Crest.Checkpoint;

// The workload's own log times, from which a migration's downtime is measured.
public sealed partial class MigrationService
{
    /// <summary>
    /// The container's CRI log timestamps: its last line, and the first line stamped after <paramref name="after"/>
    /// (a restored container's log begins with the source's lines, which the checkpoint carries).
    /// </summary>
    public async Task<LogTimes> LogTimesAsync(string idOrPrefix, DateTimeOffset? after, CancellationToken ct)
    {
        var c = await containers.GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        if (c.LogFile.Length == 0 || !File.Exists(c.LogFile))
        {
            return new LogTimes(null, null);
        }

        DateTimeOffset? last = null, firstAfter = null;
        using var reader = new StreamReader(new FileStream(c.LogFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite));
        while (await reader.ReadLineAsync(ct).ConfigureAwait(false) is { } line)
        {
            if (LineTime(line) is not { } at)
            {
                continue;
            }

            last = at;
            if (firstAfter is null && after is { } a && at > a)
            {
                firstAfter = at;
            }
        }

        return new LogTimes(last, firstAfter);
    }

    /// <summary>
    /// A CRI log line's timestamp (RFC 3339 with up to nanoseconds, as conmon writes it), to 100 ns: .NET parses at most
    /// seven fraction digits, so the rest are dropped. Null for a line that does not start with one.
    /// </summary>
    internal static DateTimeOffset? LineTime(string line)
    {
        var space = line.IndexOf(' ', StringComparison.Ordinal);
        if (space <= 0)
        {
            return null;
        }

        var stamp = line[..space];
        var dot = stamp.IndexOf('.', StringComparison.Ordinal);
        if (dot > 0)
        {
            var end = dot + 1;
            while (end < stamp.Length && char.IsAsciiDigit(stamp[end]))
            {
                end++;
            }

            var fraction = stamp[(dot + 1)..end];
            stamp = stamp[..dot] + (fraction.Length > 0 ? "." + fraction[..Math.Min(7, fraction.Length)] : "") + stamp[end..];
        }

        return DateTimeOffset.TryParse(stamp, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var at) ? at : null;
    }
}
