using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Crest.Cli.Output;

/// <summary>Writes a JSON document as block-style YAML (what crictl -o yaml prints), quoting strings that YAML would misread.</summary>
internal static partial class YamlWriter
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
            return System.Text.Json.Nodes.JsonValue.Create(s).ToJsonString();
        }

        return s;
    }

    /// <summary>
    /// Plain only when YAML 1.1 and 1.2 readers alike read it back as this string: letters, digits and a few
    /// separators, not starting like a number, and none of the words YAML turns into booleans or nulls.
    /// </summary>
    private static bool NeedsQuotes(string s)
    {
        if (!PlainSafe().IsMatch(s))
        {
            return true;
        }

        var lower = s.ToLowerInvariant();
        return lower is "true" or "false" or "yes" or "no" or "on" or "off" or "y" or "n" or "null" or "~"
            || char.IsDigit(s[0]) || s[0] is '.' or '-' or '+';
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"^[A-Za-z0-9_./@+-][A-Za-z0-9_./@+:-]*(?<!:)$")]
    private static partial System.Text.RegularExpressions.Regex PlainSafe();
}
