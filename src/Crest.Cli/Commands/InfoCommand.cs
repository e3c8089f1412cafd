using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Crest.Cli.Output;
using Runtime.V1;
using Spectre.Console;

namespace Crest.Cli.Commands;

/// <summary><c>crest info</c>: the runtime's conditions, handlers and verbose information (CRI Status, verbose).</summary>
internal static class InfoCommand
{
    public static Command Create(GlobalOptions global, TextWriter output)
    {
        var command = new Command("info", "Show the runtime's readiness conditions and configuration");
        command.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            // JSON by default, as crictl info prints it.
            var ctx = CliContext.From(parse, global, OutputFormat.Json, output);
            using var connection = new CriConnection(ctx.RuntimeEndpoint, ctx.Timeout);
            var response = await CliRunner.CallAsync(connection, "Status",
                c => new RuntimeService.RuntimeServiceClient(connection.Channel).StatusAsync(new StatusRequest { Verbose = true }, c).ResponseAsync, ct);
            var renderer = ctx.Renderer();
            if (renderer.Format == OutputFormat.Table)
            {
                WriteTable(renderer.Console(), output, response);
            }
            else
            {
                renderer.Document(ToDocument(response));
            }

            // A runtime that is not ready is worth a non-zero exit in scripts: the answer came, but it says "no".
            return response.Status.Conditions.Where(c => c.Type is "RuntimeReady" or "NetworkReady").All(c => c.Status)
                ? ExitCodes.Success
                : ExitCodes.RuntimeError;
        }));
        return command;
    }

    /// <summary>crictl's shape: {"status": ..., "runtimeHandlers": ..., "features": ..., then each info key as its JSON value}.</summary>
    internal static JsonObject ToDocument(StatusResponse response)
    {
        var full = Renderer.ToJson(response).AsObject();
        var doc = new JsonObject
        {
            ["status"] = full["status"]?.DeepClone(),
            ["runtimeHandlers"] = full["runtimeHandlers"]?.DeepClone(),
            ["features"] = full["features"]?.DeepClone(),
        };
        foreach (var (key, value) in response.Info.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            try
            {
                doc[key] = JsonNode.Parse(value);
            }
            catch (JsonException)
            {
                doc[key] = value;
            }
        }

        return doc;
    }

    private static void WriteTable(IAnsiConsole console, TextWriter output, StatusResponse response)
    {
        var conditions = new Table().AddColumns("CONDITION", "STATUS", "REASON", "MESSAGE");
        conditions.Border = TableBorder.Simple;
        foreach (var c in response.Status.Conditions)
        {
            conditions.AddRow(Markup.Escape(c.Type), c.Status ? "[green]true[/]" : "[red]false[/]", Markup.Escape(c.Reason), Markup.Escape(c.Message));
        }

        console.Write(conditions);
        var handlers = string.Join(", ", response.RuntimeHandlers.Select(h => h.Name.Length == 0 ? "(default)" : h.Name));
        // Plain lines, not console widgets: long JSON values must not be wrapped.
        output.WriteLine($"Runtime handlers: {handlers}");
        foreach (var key in response.Info.Keys.Order(StringComparer.Ordinal))
        {
            output.WriteLine($"{key}: {response.Info[key]}");
        }
    }
}
