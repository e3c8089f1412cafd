using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Crest.Bench;

/// <summary>Samples per scenario and subject; rendered as a Markdown table (min, median, crest/containerd ratio) and JSON.</summary>
internal sealed class Report(int runs, int calls)
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    private readonly List<(string Scenario, string Unit, string Subject, double Value)> _samples = [];
    private readonly List<string> _notes = [];
    private readonly Dictionary<(string Scenario, string Subject), string> _notApplicable = [];
    private readonly Dictionary<string, TargetSpec> _targets = [];

    public void Add(string scenario, string unit, string subject, double value) => _samples.Add((scenario, unit, subject, value));

    /// <summary>Why a subject has no value for a scenario (e.g. containerd has no CheckpointPod); shown in its cells instead of a dash.</summary>
    public void NotApplicable(string scenario, string subject, string reason) => _notApplicable[(scenario, subject)] = reason;

    /// <summary>Marks a row as a target: it holds when crest's median / <paramref name="against"/>'s is at most <paramref name="maxRatio"/>.</summary>
    public void Target(string scenario, double maxRatio, string against = "containerd") => _targets[scenario] = new TargetSpec(against, maxRatio, null);

    /// <summary>Marks a row as a target: it holds when crest's median is at most <paramref name="against"/>'s plus <paramref name="margin"/> (the row's unit).</summary>
    public void TargetWithin(string scenario, double margin, string against) => _targets[scenario] = new TargetSpec(against, null, margin);

    private sealed record TargetSpec(string Against, double? MaxRatio, double? Margin)
    {
        public string Describe() => MaxRatio is { } r
            ? string.Create(CultureInfo.InvariantCulture, $"≤ {r:0.00}×{(Against == "containerd" ? "" : " " + Against)}")
            : string.Create(CultureInfo.InvariantCulture, $"≤ {Against} + {Margin:0.##}");

        public bool Holds(double crest, double reference) => MaxRatio is { } r ? Math.Round(crest / reference, 2) <= r : crest <= reference + Margin!.Value;
    }

    /// <summary>A line printed under the table (and kept in the JSON): how a group of rows was measured, or what is missing.</summary>
    public void Note(string note) => _notes.Add(note);

    public string Markdown(IReadOnlyList<string> subjects, string host)
    {
        // A subject with nothing to show in any row (bare runc outside the checkpoint rows) gets no columns.
        subjects = subjects.Where(s => _samples.Any(x => x.Subject == s) || _notApplicable.Keys.Any(k => k.Subject == s)).ToList();
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"# Crest benchmarks, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        sb.AppendLine();
        sb.AppendLine(CultureInfo.InvariantCulture, $"{runs} runs per scenario on {host} ({Environment.ProcessorCount} cores); Version round trip: median of {calls} sequential calls per run.");
        sb.AppendLine("Lower is better; ratio = crest median / containerd median; target: what crest's median must reach (a ratio to containerd's median unless another column is named, or that column plus a margin), and whether it does.");
        sb.AppendLine();
        sb.Append("| scenario | unit |");
        foreach (var s in subjects)
        {
            sb.Append(CultureInfo.InvariantCulture, $" {s} min | {s} median |");
        }

        sb.AppendLine(" ratio | target |");
        sb.Append("|---|---|");
        foreach (var _ in subjects)
        {
            sb.Append("---:|---:|");
        }

        sb.AppendLine("---:|---|");
        foreach (var scenario in _samples.Select(x => x.Scenario).Distinct())
        {
            var unit = _samples.First(x => x.Scenario == scenario).Unit;
            sb.Append(CultureInfo.InvariantCulture, $"| {scenario} | {unit} |");
            foreach (var s in subjects)
            {
                var values = Values(scenario, s);
                sb.Append(values.Count == 0 ? (_notApplicable.TryGetValue((scenario, s), out var why) ? $" n/a ({why}) | n/a |" : " – | – |") : string.Create(CultureInfo.InvariantCulture, $" {Fmt(values.Min())} | {Fmt(Median(values))} |"));
            }

            var (crest, containerd) = (Values(scenario, "crest"), Values(scenario, "containerd"));
            var ratio = crest.Count > 0 && containerd.Count > 0 ? Median(crest) / Median(containerd) : (double?)null;
            sb.Append(ratio is { } r ? string.Create(CultureInfo.InvariantCulture, $" {r:0.00} |") : " – |");
            if (!_targets.TryGetValue(scenario, out var target))
            {
                sb.AppendLine(" |");
                continue;
            }

            var reference = Values(scenario, target.Against);
            sb.AppendLine(crest.Count == 0 || reference.Count == 0 ? $" {target.Describe()}: not measured |"
                : $" {target.Describe()}: {(target.Holds(Median(crest), Median(reference)) ? "holds" : "misses")} |");
        }

        if (_notes.Count > 0)
        {
            sb.AppendLine();
            foreach (var note in _notes)
            {
                sb.AppendLine(CultureInfo.InvariantCulture, $"- {note}");
            }
        }

        return sb.ToString();
    }

    public string Json() => JsonSerializer.Serialize(new
    {
        utc = DateTime.UtcNow,
        runs,
        calls,
        cores = Environment.ProcessorCount,
        notes = _notes,
        targets = _targets.Select(t => new { scenario = t.Key, against = t.Value.Against, maxRatio = t.Value.MaxRatio, margin = t.Value.Margin }),
        notApplicable = _notApplicable.Select(x => new { scenario = x.Key.Scenario, subject = x.Key.Subject, reason = x.Value }),
        samples = _samples.GroupBy(x => (x.Scenario, x.Subject)).Select(g => new
        {
            scenario = g.Key.Scenario,
            subject = g.Key.Subject,
            unit = g.First().Unit,
            values = g.Select(x => Math.Round(x.Value, 3)).ToList(),
            min = Math.Round(g.Min(x => x.Value), 3),
            median = Math.Round(Median(g.Select(x => x.Value).ToList()), 3),
        }),
    }, Indented);

    private List<double> Values(string scenario, string subject) =>
        _samples.Where(x => x.Scenario == scenario && x.Subject == subject).Select(x => x.Value).ToList();

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[(sorted.Count / 2) - 1] + sorted[sorted.Count / 2]) / 2;
    }

    private static string Fmt(double v) => v.ToString(v >= 100 ? "0" : "0.0", CultureInfo.InvariantCulture);
}
