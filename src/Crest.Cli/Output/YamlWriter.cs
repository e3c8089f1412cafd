using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Crest.Cli.Output;

/// <summary>Writes a JSON document as block-style YAML (what crictl -o yaml prints), quoting strings that YAML would misread.</summary>
internal static class YamlWriter
{
    public static string Write(JsonElement element)
    {
        var sb = new StringBuilder();
        WriteValue(sb, element, 0, inSequence: false);
        return sb.ToString();
    }

    private static void WriteValue(StringBuilder sb, JsonElement e, int indent, bool inSequence)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.Object:
                var first = true;
                if (!e.EnumerateObject().Any())
                {
                    sb.Append("{}\n");
                    return;
                }

                foreach (var p in e.EnumerateObject())
                {
                    // The first key of a mapping inside a sequence item sits on the "- " line.
                    if (!(inSequence && first))
                    {
                        sb.Append(' ', indent);
                    }

                    first = false;
                    sb.Append(Scalar(p.Name)).Append(':');
                    WriteChild(sb, p.Value, indent);
                }

                break;
            case JsonValueKind.Array:
                if (e.GetArrayLength() == 0)
                {
                    sb.Append("[]\n");
                    return;
                }

                var firstItem = true;
                foreach (var item in e.EnumerateArray())
                {
                    if (!(inSequence && firstItem))
                    {
                        sb.Append(' ', indent);
                    }

                    firstItem = false;
                    sb.Append("- ");
                    if (item.ValueKind is JsonValueKind.Object or JsonValueKind.Array && HasItems(item))
                    {
                        WriteValue(sb, item, indent + 2, inSequence: true);
                    }
                    else
                    {
                        WriteValue(sb, item, indent + 2, inSequence: false);
                    }
                }

                break;
            default:
                sb.Append(ScalarValue(e)).Append('\n');
                break;
        }
    }

    private static void WriteChild(StringBuilder sb, JsonElement value, int indent)
    {
        if (value.ValueKind is JsonValueKind.Object or JsonValueKind.Array && HasItems(value))
        {
            sb.Append('\n');
            WriteValue(sb, value, indent + 2, inSequence: false);
        }
        else
        {
            sb.Append(' ');
            WriteValue(sb, value, indent + 2, inSequence: false);
        }
    }

    private static bool HasItems(JsonElement e) =>
        e.ValueKind == JsonValueKind.Object ? e.EnumerateObject().Any() : e.GetArrayLength() > 0;

    private static string ScalarValue(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.String => Scalar(e.GetString()!),
        JsonValueKind.Number => e.GetRawText(),
        JsonValueKind.True => "true",
        JsonValueKind.False => "false",
        _ => "null",
    };

    private static string Scalar(string s)
    {
        if (s.Length == 0 || NeedsQuotes(s))
        {
            return JsonSerializer.Serialize(s);
        }

        return s;
    }

    private static bool NeedsQuotes(string s)
    {
        if (s is "true" or "false" or "null" or "~" or "yes" or "no" or "on" or "off" || double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out _))
        {
            return true;
        }

        if (char.IsWhiteSpace(s[0]) || char.IsWhiteSpace(s[^1]) || "-?:,[]{}#&*!|>'\"%@`".Contains(s[0], StringComparison.Ordinal))
        {
            return true;
        }

        return s.Contains(": ", StringComparison.Ordinal) || s.Contains(" #", StringComparison.Ordinal) || s.Any(char.IsControl);
    }
}
