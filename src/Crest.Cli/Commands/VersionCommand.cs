using System.CommandLine;
using System.Text.Json.Nodes;
using Crest.Cli.Output;
using Runtime.V1;

namespace Crest.Cli.Commands;

/// <summary><c>crest version</c>: the runtime's name and versions (CRI Version).</summary>
internal static class VersionCommand
{
    public static Command Create(GlobalOptions global, TextWriter output)
    {
        var command = new Command("version", "Show the runtime's name and version");
        command.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            using var connection = new CriConnection(ctx.RuntimeEndpoint, ctx.Timeout);
            var response = await CliRunner.CallAsync(connection, "Version",
                c => new RuntimeService.RuntimeServiceClient(connection.Channel).VersionAsync(new VersionRequest { Version = "0.1.0" }, c).ResponseAsync, ct);
            var renderer = ctx.Renderer();
            if (renderer.Format == OutputFormat.Table)
            {
                // The same four lines crictl prints, so scripts that grep them keep working.
                await output.WriteLineAsync($"Version:  {response.Version}");
                await output.WriteLineAsync($"RuntimeName:  {response.RuntimeName}");
                await output.WriteLineAsync($"RuntimeVersion:  {response.RuntimeVersion}");
                await output.WriteLineAsync($"RuntimeApiVersion:  {response.RuntimeApiVersion}");
            }
            else
            {
                renderer.Document(Renderer.ToJson(response));
            }
        }));
        return command;
    }
}
