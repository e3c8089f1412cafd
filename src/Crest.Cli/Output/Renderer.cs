using System.Text.Json;
using System.Text.Json.Nodes;
using Google.Protobuf;
using Spectre.Console;

namespace Crest.Cli.Output;

/// <summary>Prints answers as JSON (protobuf field names in camelCase, as crictl does), YAML, or a table for people.</summary>
internal sealed class Renderer(OutputFormat format, TextWriter output)
{
    private static readonly JsonFormatter ProtoJson = new(JsonFormatter.Settings.Default.WithFormatDefaultValues(true));
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public OutputFormat Format { get; } = format;

    public static JsonNode ToJson(IMessage message) => JsonNode.Parse(ProtoJson.Format(message))!;

    /// <summary>Prints a document in JSON or YAML; tables are the command's own business.</summary>
    public void Document(JsonNode node)
    {
        ArgumentNullException.ThrowIfNull(node);
        switch (Format)
        {
            case OutputFormat.Yaml:
                using (var doc = JsonDocument.Parse(node.ToJsonString()))
                {
                    output.Write(YamlWriter.Write(doc.RootElement));
                }

                break;
            default:
                output.WriteLine(node.ToJsonString(Indented));
                break;
        }
    }

    public IAnsiConsole Console() => AnsiConsole.Create(new AnsiConsoleSettings
    {
        Out = new AnsiConsoleOutput(output),
        Ansi = ReferenceEquals(output, System.Console.Out) && !System.Console.IsOutputRedirected ? AnsiSupport.Detect : AnsiSupport.No,
        ColorSystem = ColorSystemSupport.Detect,
    });
}
