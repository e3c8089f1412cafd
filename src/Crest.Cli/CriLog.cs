using System.Globalization;

namespace Crest.Cli;

/// <summary>One line of the CRI log format: "RFC3339Nano stream P|F content"; P marks a partial line that continues.</summary>
internal sealed record CriLogLine(DateTimeOffset Time, string Stream, bool Partial, string Content)
{
    public static CriLogLine? Parse(string line)
    {
        var first = line.IndexOf(' ', StringComparison.Ordinal);
        var second = first < 0 ? -1 : line.IndexOf(' ', first + 1);
        var third = second < 0 ? -1 : line.IndexOf(' ', second + 1);
        if (third < 0 || !DateTimeOffset.TryParse(line[..first], CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind, out var time))
        {
            return null;
        }

        var tag = line[(second + 1)..third];
        return new CriLogLine(time, line[(first + 1)..second], tag.Split(':').Contains("P"), line[(third + 1)..]);
    }

    /// <summary>Joins partial lines into whole ones (per stream), as the kubelet shows them.</summary>
    public static IEnumerable<CriLogLine> Whole(IEnumerable<string> lines)
    {
        var joiner = new CriLogJoiner();
        return lines.SelectMany(joiner.Add).ToList();
    }
}

/// <summary>Keeps partial lines per stream until their final part arrives, across reads (for --follow).</summary>
internal sealed class CriLogJoiner
{
    private readonly Dictionary<string, (DateTimeOffset Time, System.Text.StringBuilder Text)> _pending = new(StringComparer.Ordinal);

    public IEnumerable<CriLogLine> Add(string raw)
    {
        if (CriLogLine.Parse(raw) is not { } line)
        {
            return [];
        }

        if (!_pending.TryGetValue(line.Stream, out var p))
        {
            p = (line.Time, new System.Text.StringBuilder());
            _pending[line.Stream] = p;
        }

        p.Text.Append(line.Content);
        if (line.Partial)
        {
            return [];
        }

        _pending.Remove(line.Stream);
        return [new CriLogLine(p.Time, line.Stream, false, p.Text.ToString())];
    }
}
