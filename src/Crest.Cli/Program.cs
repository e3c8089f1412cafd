using System.CommandLine;
using Crest.Cli;
using Crest.Cli.Commands;

var global = new GlobalOptions();
var root = new RootCommand("crest: a crictl-style client for any CRI runtime, with checkpoint/restore tools for Crest");
global.AddTo(root);
root.Subcommands.Add(VersionCommand.Create(global, Console.Out));
root.Subcommands.Add(InfoCommand.Create(global, Console.Out));
root.Subcommands.Add(MigrateCommand.Create(global, Console.Out));
root.Subcommands.Add(ResumeCommand.Create(global, Console.Out));
foreach (var command in ImageCommands.Create(global, Console.Out).Concat(PodCommands.Create(global, Console.Out)).Concat(StreamCommands.Create(global, Console.Out)).Concat(CheckpointCommands.Create(global, Console.Out)))
{
    root.Subcommands.Add(command);
}

var parse = root.Parse(args);
if (parse.Errors.Count > 0)
{
    foreach (var error in parse.Errors)
    {
        await Console.Error.WriteLineAsync($"crest: {error.Message}");
    }

    await Console.Error.WriteLineAsync("Run 'crest --help' for usage.");
    return ExitCodes.Usage;
}

return await parse.InvokeAsync();
