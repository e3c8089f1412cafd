using System.CommandLine;
using Crest.Core;
using Crest.Daemon;
using Crest.Daemon.Config;

var configOption = new Option<string?>("--config", "-c") { Description = $"config file (default {CrestPaths.DefaultConfig}; missing default file means built-in defaults)" };
var rootOption = new Option<string?>("--root") { Description = $"persistent state root (default {CrestPaths.DefaultRoot})" };
var stateOption = new Option<string?>("--state") { Description = $"volatile state root (default {CrestPaths.DefaultState})" };
var socketOption = new Option<string?>("--socket", "-s") { Description = $"CRI socket path (default {CrestPaths.DefaultSocket}, or <state>/crest.sock when --state is given)" };
var logLevelOption = new Option<string?>("--log-level") { Description = "trace, debug, info, warn, error" };
var logFormatOption = new Option<string?>("--log-format") { Description = "text or json" };

var root = new RootCommand("crestd: a Kubernetes container runtime (CRI v1) built for checkpoint and restore")
{
    configOption, rootOption, stateOption, socketOption, logLevelOption, logFormatOption,
};

root.SetAction(async (parse, ct) =>
{
    var systemd = SystemdNotify.FromEnvironment();
    CrestConfig config;
    try
    {
        config = ConfigLoader.Load(new ConfigOverrides(
            parse.GetValue(configOption), parse.GetValue(rootOption), parse.GetValue(stateOption),
            parse.GetValue(socketOption), parse.GetValue(logLevelOption), parse.GetValue(logFormatOption)));
    }
    catch (CrestException e)
    {
        await Console.Error.WriteLineAsync($"crestd: {e.Message}");
        return 2;
    }

    CrestDaemon daemon;
    try
    {
        daemon = await CrestDaemon.StartAsync(config, ct);
    }
    catch (CrestException e)
    {
        await Console.Error.WriteLineAsync($"crestd: {e.Message}");
        return e.Kind == ErrorKind.AlreadyExists ? 3 : 1;
    }
    catch (Exception e) when (e is IOException or UnauthorizedAccessException or System.Net.Sockets.SocketException or InvalidOperationException)
    {
        await Console.Error.WriteLineAsync($"crestd: could not start: {e.Message}");
        return 1;
    }

    await using (daemon)
    {
        // Ready means serving: the socket listens with its final mode and recovery is done.
        if (!systemd.TrySend($"READY=1\nMAINPID={Environment.ProcessId}\nSTATUS=serving CRI on {config.Paths.Socket}", out var problem))
        {
            await Console.Error.WriteLineAsync($"crestd: {problem}");
        }

        // The host's console lifetime turns SIGTERM and SIGINT into a graceful stop.
        using var stopping = daemon.Stopping.Register(() => systemd.TrySend("STOPPING=1", out _));
        await daemon.Completion;
    }

    return 0;
});

// crestd's CRIU kernel-facts probe (CriuKernelFactsCache), which crestd runs under unshare --mount; not for operators.
var probeCriu = new Option<string>("--criu") { Required = true };
var probeRunDir = new Option<string>("--run-dir") { Required = true };
var probeOut = new Option<string>("--out") { Required = true };
var probe = new Command("criu-kernel-facts", "internal: gathers CRIU's kernel facts in a private mount namespace") { probeCriu, probeRunDir, probeOut };
probe.Hidden = true;
probe.SetAction((parse, ct) => Crest.Checkpoint.CriuKernelFactsCache.ProbeAsync(parse.GetValue(probeCriu)!, parse.GetValue(probeRunDir)!, parse.GetValue(probeOut)!,
    new Crest.Linux.LinuxSyscalls(), new Crest.Runtime.ProcessCommandRunner(), Console.Error, ct));
root.Subcommands.Add(probe);

// The host handles SIGTERM/SIGINT as a graceful stop; System.CommandLine must not race it to exit.
return await root.Parse(args).InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = null });
