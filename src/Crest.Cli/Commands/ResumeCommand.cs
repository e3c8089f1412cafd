using System.CommandLine;
using Crest.Api.V1;

namespace Crest.Cli.Commands;

/// <summary>
/// <c>crest resume CONTAINER...</c>: runs a container that a live migration left frozen on this node again
/// (crest.v1.CrestMigration/Resume), ending its migration hold. For an operator ending a migration that <c>crest migrate</c>
/// could not finish: only when no copy of the container runs on the target (else <c>crest rm</c> ends the frozen one).
/// </summary>
internal static class ResumeCommand
{
    public static Command Create(GlobalOptions global, TextWriter output)
    {
        var ids = new Argument<string[]>("container-id") { Arity = ArgumentArity.OneOrMore, Description = "containers a migration left frozen on this node" };
        var command = new Command("resume", "Resume a container a live migration left frozen here (only when no copy of it runs on the target; crest rm ends it otherwise)") { ids };
        command.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, Output.OutputFormat.Table, output);
            using var connection = new CriConnection(ctx.RuntimeEndpoint, parse.GetValue(global.Timeout) is null ? TimeSpan.FromMinutes(2) : ctx.Timeout);
            var client = new CrestMigration.CrestMigrationClient(connection.Channel);
            foreach (var id in parse.GetValue(ids)!)
            {
                await CliRunner.CallAsync(connection, "crest.v1.CrestMigration/Resume", o => client.ResumeAsync(new ResumeRequest { ContainerId = id }, o).ResponseAsync, ct);
                await output.WriteLineAsync(id);
            }
        }));
        return command;
    }
}
