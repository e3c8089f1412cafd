using System.CommandLine;
using System.Globalization;
using System.Net.Sockets;
using Crest.Cli.Output;
using Runtime.V1;

namespace Crest.Cli.Commands;

/// <summary>The verbs that stream: exec (ExecSync or the streaming Exec), attach, port-forward; and statsp.</summary>
internal static class StreamCommands
{
    public static IEnumerable<Command> Create(GlobalOptions global, TextWriter output)
    {
        var execId = new Argument<string>("container-id");
        var execCmd = new Argument<string[]>("command") { Arity = ArgumentArity.OneOrMore };
        var execSync = new Option<bool>("--sync", "-s") { Description = "run through ExecSync and print the output when the command ends" };
        var execInteractive = new Option<bool>("--interactive", "-i") { Description = "send this terminal's stdin to the command" };
        var execTty = new Option<bool>("--tty", "-t") { Description = "give the command a terminal (this one in raw mode when stdin is a terminal)" };
        var execTimeout = new Option<long>("--timeout-seconds") { Description = "with -s: kill the command after this many seconds (0: no limit)", DefaultValueFactory = _ => 0 };
        var exec = new Command("exec", "Run a command in a running container") { execId, execCmd, execSync, execInteractive, execTty, execTimeout };
        exec.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            var interactive = parse.GetValue(execInteractive);
            var tty = parse.GetValue(execTty);
            if (parse.GetValue(execSync))
            {
                if (interactive || tty)
                {
                    throw new CliUsageException("-s (ExecSync) cannot be combined with -i or -t: ExecSync has no stdin and no terminal");
                }

                return await ExecSyncAsync(ctx, parse.GetValue(execId)!, parse.GetValue(execCmd)!, parse.GetValue(execTimeout), ct);
            }

            using var connection = new CriConnection(ctx.RuntimeEndpoint, ctx.Timeout);
            var r = await CliRunner.CallAsync(connection, "Exec", o => new RuntimeService.RuntimeServiceClient(connection.Channel).ExecAsync(new ExecRequest
            {
                ContainerId = parse.GetValue(execId)!,
                Cmd = { parse.GetValue(execCmd)! },
                Stdin = interactive,
                Stdout = true,
                Stderr = !tty,
                Tty = tty,
            }, o).ResponseAsync, ct);
            return await RemoteCommand.RunAsync(r.Url, interactive, tty, ct);
        }));
        yield return exec;

        var attachId = new Argument<string>("container-id");
        var attachInteractive = new Option<bool>("--interactive", "-i") { Description = "send this terminal's stdin to the container (it must have been created with stdin)" };
        var attachTty = new Option<bool>("--tty", "-t") { Description = "the container has a terminal (put this one in raw mode)" };
        var attach = new Command("attach", "Attach to a running container's main process (its live output; stdin with -i)") { attachId, attachInteractive, attachTty };
        attach.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            var tty = parse.GetValue(attachTty);
            using var connection = new CriConnection(ctx.RuntimeEndpoint, ctx.Timeout);
            var r = await CliRunner.CallAsync(connection, "Attach", o => new RuntimeService.RuntimeServiceClient(connection.Channel).AttachAsync(new AttachRequest
            {
                ContainerId = parse.GetValue(attachId)!,
                Stdin = parse.GetValue(attachInteractive),
                Stdout = true,
                Stderr = !tty,
                Tty = tty,
            }, o).ResponseAsync, ct);
            return await RemoteCommand.RunAsync(r.Url, parse.GetValue(attachInteractive), tty, ct);
        }));
        yield return attach;

        var forwardPod = new Argument<string>("pod-id");
        var forwardPorts = new Argument<string[]>("ports") { Arity = ArgumentArity.OneOrMore, Description = "LOCAL:REMOTE or REMOTE; LOCAL 0 takes any free port" };
        var forward = new Command("port-forward", "Forward local ports to ports on a pod's loopback until interrupted") { forwardPod, forwardPorts };
        forward.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            var mappings = parse.GetValue(forwardPorts)!.Select(PortForwarder.ParseMapping).ToList();
            using var connection = new CriConnection(ctx.RuntimeEndpoint, ctx.Timeout);
            var client = new RuntimeService.RuntimeServiceClient(connection.Channel);
            var pod = parse.GetValue(forwardPod)!;
            // The pod is checked once before listening, so a wrong ID fails at once.
            await CliRunner.CallAsync(connection, "PortForward", o => client.PortForwardAsync(new PortForwardRequest { PodSandboxId = pod, Port = { mappings.Select(m => m.Remote) } }, o).ResponseAsync, ct);
            var listeners = mappings.Select(m => (Listener: PortForwarder.Listen(m.Local), m.Remote)).ToList();
            try
            {
                foreach (var (listener, remote) in listeners)
                {
                    await output.WriteLineAsync($"Forwarding from 127.0.0.1:{((System.Net.IPEndPoint)listener.LocalEndpoint).Port} -> {remote}");
                }

                await output.FlushAsync(ct);
                await Task.WhenAll(listeners.Select(l => AcceptLoopAsync(l.Listener, l.Remote)));
            }
            finally
            {
                foreach (var (listener, _) in listeners)
                {
                    listener.Stop();
                }
            }

            async Task AcceptLoopAsync(TcpListener listener, int remote)
            {
                while (!ct.IsCancellationRequested)
                {
                    Socket local;
                    try
                    {
                        local = await listener.AcceptSocketAsync(ct);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }

                    _ = Task.Run(async () =>
                    {
                        using (local)
                        {
                            try
                            {
                                var r = await CliRunner.CallAsync(connection, "PortForward", o => client.PortForwardAsync(new PortForwardRequest { PodSandboxId = pod, Port = { remote } }, o).ResponseAsync, ct);
                                await PortForwarder.CarryAsync(local, r.Url, remote, CliRunner.Error, ct);
                            }
                            catch (Exception e) when (e is CliFailure or SocketException or IOException or OperationCanceledException)
                            {
                                await CliRunner.Error.WriteLineAsync($"crest: port-forward of a connection to {remote}: {e.Message}");
                            }
                        }
                    }, CancellationToken.None);
                }
            }
        }));
        yield return forward;

        var statspId = new Argument<string?>("pod-id") { Arity = ArgumentArity.ZeroOrOne };
        var statsp = new Command("statsp", "Show pods' CPU and memory use") { statspId };
        statsp.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            using var connection = new CriConnection(ctx.RuntimeEndpoint, ctx.Timeout);
            var client = new RuntimeService.RuntimeServiceClient(connection.Channel);
            var filter = new PodSandboxStatsFilter { Id = parse.GetValue(statspId) ?? "" };
            // CPU % needs two samples, as crictl takes them.
            var first = await CliRunner.CallAsync(connection, "ListPodSandboxStats", o => client.ListPodSandboxStatsAsync(new ListPodSandboxStatsRequest { Filter = filter }, o).ResponseAsync, ct);
            await Task.Delay(1000, ct);
            var second = await CliRunner.CallAsync(connection, "ListPodSandboxStats", o => client.ListPodSandboxStatsAsync(new ListPodSandboxStatsRequest { Filter = filter }, o).ResponseAsync, ct);
            if (ctx.Format != OutputFormat.Table)
            {
                ctx.Renderer().Document(Renderer.ToJson(second));
                return;
            }

            var before = first.Stats.ToDictionary(s => s.Attributes.Id, StringComparer.Ordinal);
            var rows = second.Stats.Select(s =>
            {
                var cpu = "-";
                var now = s.Linux?.Cpu;
                if (before.TryGetValue(s.Attributes.Id, out var b) && now is not null && b.Linux?.Cpu is { } then && now.Timestamp > then.Timestamp)
                {
                    var used = (double)(now.UsageCoreNanoSeconds.Value - then.UsageCoreNanoSeconds.Value);
                    cpu = (used / (now.Timestamp - then.Timestamp) * 100).ToString("0.00", CultureInfo.InvariantCulture);
                }

                return new[]
                {
                    s.Attributes.Metadata.Name, s.Attributes.Id[..13], cpu,
                    ImageCommands.HumanSize((long)(s.Linux?.Memory?.WorkingSetBytes?.Value ?? 0)),
                };
            }).ToList();
            await Columns.WriteAsync(output, ["POD", "POD ID", "CPU %", "MEM"], rows);
        }));
        yield return statsp;
    }

    private static async Task<int> ExecSyncAsync(CliContext ctx, string id, string[] command, long seconds, CancellationToken ct)
    {
        using var connection = new CriConnection(ctx.RuntimeEndpoint, seconds > 0 ? TimeSpan.FromSeconds(seconds + 10) : TimeSpan.FromHours(1));
        var r = await CliRunner.CallAsync(connection, "ExecSync", o => new RuntimeService.RuntimeServiceClient(connection.Channel).ExecSyncAsync(
            new ExecSyncRequest { ContainerId = id, Cmd = { command }, Timeout = seconds }, o).ResponseAsync, ct);
        await using (var stdout = Console.OpenStandardOutput())
        {
            await stdout.WriteAsync(r.Stdout.Memory, ct);
        }

        await using (var stderr = Console.OpenStandardError())
        {
            await stderr.WriteAsync(r.Stderr.Memory, ct);
        }

        return r.ExitCode;
    }
}
