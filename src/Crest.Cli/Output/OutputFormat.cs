namespace Crest.Cli.Output;

internal enum OutputFormat
{
    Table,
    Json,
    Yaml,
}

internal static class OutputFormats
{
    public static OutputFormat Parse(string? text, OutputFormat fallback) => text?.ToLowerInvariant() switch
    {
        null or "" => fallback,
        "table" => OutputFormat.Table,
        "json" => OutputFormat.Json,
        "yaml" or "yml" => OutputFormat.Yaml,
        _ => throw new CliUsageException($"unknown output format \"{text}\"; use json, yaml or table"),
    };
}
