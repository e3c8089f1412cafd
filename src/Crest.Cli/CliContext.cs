using System.CommandLine;
using System.Globalization;
using Crest.Cli.Output;

namespace Crest.Cli;

/// <summary>The global options every verb shares, as crictl spells them.</summary>
internal sealed class GlobalOptions
{
    public Option<string?> RuntimeEndpoint { get; } = new("--runtime-endpoint", "-r")
    {
        Description = $"CRI runtime endpoint (env CONTAINER_RUNTIME_ENDPOINT; default {CriEndpoint.DefaultEndpoint})",
        Recursive = true,
    };

    public Option<string?> ImageEndpoint { get; } = new("--image-endpoint", "-i")
    {
        Description = "CRI image endpoint (env IMAGE_SERVICE_ENDPOINT; default: the runtime endpoint)",
        Recursive = true,
    };

    public Option<string?> Timeout { get; } = new("--timeout", "-t")
    {
        Description = "deadline of each call, e.g. 2s, 500ms, 1m (default 10s)",
        Recursive = true,
    };

    public Option<string?> Output { get; } = new("--output", "-o")
    {
        Description = "output format: table, json or yaml",
        Recursive = true,
    };

    public void AddTo(RootCommand root)
    {
        root.Options.Add(RuntimeEndpoint);
        root.Options.Add(ImageEndpoint);
        root.Options.Add(Timeout);
        root.Options.Add(Output);
    }
}

/// <summary>What a command needs from the command line: where to connect, how long to wait, how to print.</summary>
internal sealed record CliContext(CriEndpoint RuntimeEndpoint, CriEndpoint ImageEndpoint, TimeSpan Timeout, OutputFormat Format, TextWriter Out)
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(10);

    public static CliContext From(ParseResult parse, GlobalOptions options, OutputFormat defaultFormat, TextWriter output)
    {
        ArgumentNullException.ThrowIfNull(parse);
        ArgumentNullException.ThrowIfNull(options);
        var runtime = CriEndpoint.Resolve(parse.GetValue(options.RuntimeEndpoint), Environment.GetEnvironmentVariable("CONTAINER_RUNTIME_ENDPOINT"));
        var imageFlag = parse.GetValue(options.ImageEndpoint);
        var imageEnv = Environment.GetEnvironmentVariable("IMAGE_SERVICE_ENDPOINT");
        var image = string.IsNullOrWhiteSpace(imageFlag) && string.IsNullOrWhiteSpace(imageEnv) ? runtime : CriEndpoint.Resolve(imageFlag, imageEnv);
        return new CliContext(runtime, image, ParseTimeout(parse.GetValue(options.Timeout)),
            OutputFormats.Parse(parse.GetValue(options.Output), defaultFormat), output);
    }

    public Renderer Renderer() => new(Format, Out);

    /// <summary>Durations as crictl takes them: 2s, 500ms, 1m, 1h, or a bare number of seconds; 0 or less means the default.</summary>
    public static TimeSpan ParseTimeout(string? text)
    {
        if (string.IsNullOrWhiteSpace(text))
        {
            return DefaultTimeout;
        }

        var t = text.Trim();
        (string Suffix, double Scale)[] units = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)];
        foreach (var (suffix, scale) in units)
        {
            if (t.EndsWith(suffix, StringComparison.Ordinal) && double.TryParse(t[..^suffix.Length], NumberStyles.Float, CultureInfo.InvariantCulture, out var value))
            {
                return value <= 0 ? DefaultTimeout : Bounded(value * scale, text);
            }
        }

        if (double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds))
        {
            return seconds <= 0 ? DefaultTimeout : Bounded(seconds, text);
        }

        throw new CliUsageException($"--timeout \"{text}\" is not a duration; use a value such as 2s, 500ms or 1m");
    }

    private static TimeSpan Bounded(double seconds, string text) => seconds <= TimeSpan.FromDays(7).TotalSeconds
        ? TimeSpan.FromSeconds(seconds)
        : throw new CliUsageException($"--timeout \"{text}\" is longer than 7 days");
}
