using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Crest.Cli.Output;
using Google.Protobuf;
using Runtime.V1;

namespace Crest.Cli.Commands;

/// <summary>crictl's pod and container verbs: runp, create, start, run, stop, rm, stopp, rmp, ps, pods, inspect, inspectp.</summary>
internal static class PodCommands
{
    private static readonly JsonParser Parser = new(JsonParser.Settings.Default.WithIgnoreUnknownFields(true));

    public static IEnumerable<Command> Create(GlobalOptions global, TextWriter output)
    {
        var runtimeHandler = new Option<string?>("--runtime") { Description = "runtime handler (runc, crun)" };

        var podConfig = new Argument<string>("pod-config.json");
        var runp = new Command("runp", "Run a pod sandbox from a crictl pod config file") { podConfig, runtimeHandler };
        runp.SetAction((parse, ct) => Call(parse, global, output, async (client, o) =>
        {
            var config = ReadConfig<PodSandboxConfig>(parse.GetValue(podConfig)!);
            var r = await client.RunPodSandboxAsync(new RunPodSandboxRequest { Config = config, RuntimeHandler = parse.GetValue(runtimeHandler) ?? "" }, o);
            await output.WriteLineAsync(r.PodSandboxId);
        }, ct));
        yield return runp;

        var createPod = new Argument<string>("pod-id");
        var createConfig = new Argument<string>("container-config.json");
        var createPodConfig = new Argument<string>("pod-config.json");
        var create = new Command("create", "Create a container in a pod from crictl config files") { createPod, createConfig, createPodConfig };
        create.SetAction((parse, ct) => Call(parse, global, output, async (client, o) =>
        {
            var r = await client.CreateContainerAsync(new CreateContainerRequest
            {
                PodSandboxId = parse.GetValue(createPod)!,
                Config = ReadConfig<ContainerConfig>(parse.GetValue(createConfig)!),
                SandboxConfig = ReadConfig<PodSandboxConfig>(parse.GetValue(createPodConfig)!),
            }, o);
            await output.WriteLineAsync(r.ContainerId);
        }, ct));
        yield return create;

        var startIds = new Argument<string[]>("container-id") { Arity = ArgumentArity.OneOrMore };
        var start = new Command("start", "Start created containers") { startIds };
        start.SetAction((parse, ct) => Call(parse, global, output, async (client, o) =>
        {
            foreach (var id in parse.GetValue(startIds)!)
            {
                await client.StartContainerAsync(new StartContainerRequest { ContainerId = id }, o);
                await output.WriteLineAsync(id);
            }
        }, ct));
        yield return start;

        var runConfig = new Argument<string>("container-config.json");
        var runPodConfig = new Argument<string>("pod-config.json");
        var run = new Command("run", "Run a pod and a container in it") { runConfig, runPodConfig, runtimeHandler };
        run.SetAction((parse, ct) => Call(parse, global, output, async (client, o) =>
        {
            var pod = ReadConfig<PodSandboxConfig>(parse.GetValue(runPodConfig)!);
            var p = await client.RunPodSandboxAsync(new RunPodSandboxRequest { Config = pod, RuntimeHandler = parse.GetValue(runtimeHandler) ?? "" }, o);
            var c = await client.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = p.PodSandboxId, Config = ReadConfig<ContainerConfig>(parse.GetValue(runConfig)!), SandboxConfig = pod }, o);
            await client.StartContainerAsync(new StartContainerRequest { ContainerId = c.ContainerId }, o);
            await output.WriteLineAsync(c.ContainerId);
        }, ct));
        yield return run;

        var stopIds = new Argument<string[]>("container-id") { Arity = ArgumentArity.OneOrMore };
        var stopTimeout = new Option<long>("--timeout-seconds", "-T") { Description = "seconds before SIGKILL", DefaultValueFactory = _ => 10 };
        var stop = new Command("stop", "Stop containers") { stopIds, stopTimeout };
        stop.SetAction((parse, ct) => Call(parse, global, output, async (client, o) =>
        {
            foreach (var id in parse.GetValue(stopIds)!)
            {
                await client.StopContainerAsync(new StopContainerRequest { ContainerId = id, Timeout = parse.GetValue(stopTimeout) }, o);
                await output.WriteLineAsync(id);
            }
        }, ct));
        yield return stop;

        var rmIds = new Argument<string[]>("container-id") { Arity = ArgumentArity.OneOrMore };
        var rm = new Command("rm", "Remove containers") { rmIds };
        rm.SetAction((parse, ct) => Call(parse, global, output, async (client, o) =>
        {
            foreach (var id in parse.GetValue(rmIds)!)
            {
                await client.RemoveContainerAsync(new RemoveContainerRequest { ContainerId = id }, o);
                await output.WriteLineAsync(id);
            }
        }, ct));
        yield return rm;

        var stoppIds = new Argument<string[]>("pod-id") { Arity = ArgumentArity.OneOrMore };
        var stopp = new Command("stopp", "Stop pod sandboxes") { stoppIds };
        stopp.SetAction((parse, ct) => Call(parse, global, output, async (client, o) =>
        {
            foreach (var id in parse.GetValue(stoppIds)!)
            {
                await client.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = id }, o);
                await output.WriteLineAsync($"Stopped sandbox {id}");
            }
        }, ct));
        yield return stopp;

        var rmpIds = new Argument<string[]>("pod-id") { Arity = ArgumentArity.OneOrMore };
        var rmp = new Command("rmp", "Remove pod sandboxes") { rmpIds };
        rmp.SetAction((parse, ct) => Call(parse, global, output, async (client, o) =>
        {
            foreach (var id in parse.GetValue(rmpIds)!)
            {
                await client.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = id }, o);
                await output.WriteLineAsync($"Removed sandbox {id}");
            }
        }, ct));
        yield return rmp;

        var all = new Option<bool>("--all", "-a") { Description = "show exited containers too" };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "only IDs" };
        var podFilter = new Option<string?>("--pod", "-p") { Description = "only containers of this pod" };
        var ps = new Command("ps", "List containers") { all, quiet, podFilter };
        ps.SetAction((parse, ct) => Call(parse, global, output, async (client, o) =>
        {
            var filter = new ContainerFilter { PodSandboxId = parse.GetValue(podFilter) ?? "" };
            if (!parse.GetValue(all))
            {
                filter.State = new ContainerStateValue { State = ContainerState.ContainerRunning };
            }

            var r = await client.ListContainersAsync(new ListContainersRequest { Filter = filter }, o);
            var format = OutputFormats.Parse(parse.GetValue(global.Output), OutputFormat.Table);
            if (format != OutputFormat.Table)
            {
                new Renderer(format, output).Document(Renderer.ToJson(r));
                return;
            }

            if (parse.GetValue(quiet))
            {
                foreach (var c in r.Containers)
                {
                    await output.WriteLineAsync(c.Id);
                }

                return;
            }

            await Columns.WriteAsync(output, ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID"],
                r.Containers.Select(c => new[] { c.Id[..13], c.Image.Image, Ago(c.CreatedAt), c.State.ToString().Replace("Container", "", StringComparison.Ordinal), c.Metadata.Name, c.Metadata.Attempt.ToString(CultureInfo.InvariantCulture), c.PodSandboxId[..13] }).ToList());
        }, ct));
        yield return ps;

        var podsQuiet = new Option<bool>("--quiet", "-q") { Description = "only IDs" };
        var pods = new Command("pods", "List pod sandboxes") { podsQuiet };
        pods.SetAction((parse, ct) => Call(parse, global, output, async (client, o) =>
        {
            var r = await client.ListPodSandboxAsync(new ListPodSandboxRequest(), o);
            var format = OutputFormats.Parse(parse.GetValue(global.Output), OutputFormat.Table);
            if (format != OutputFormat.Table)
            {
                new Renderer(format, output).Document(Renderer.ToJson(r));
                return;
            }

            if (parse.GetValue(podsQuiet))
            {
                foreach (var p in r.Items)
                {
                    await output.WriteLineAsync(p.Id);
                }

                return;
            }

            await Columns.WriteAsync(output, ["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"],
                r.Items.Select(p => new[] { p.Id[..13], Ago(p.CreatedAt), p.State == PodSandboxState.SandboxReady ? "Ready" : "NotReady", p.Metadata.Name, p.Metadata.Namespace, p.Metadata.Attempt.ToString(CultureInfo.InvariantCulture), p.RuntimeHandler }).ToList());
        }, ct));
        yield return pods;

        var logsId = new Argument<string>("container-id");
        var follow = new Option<bool>("--follow", "-f") { Description = "keep printing new lines" };
        var tail = new Option<int>("--tail") { Description = "only the last N lines (-1: all)", DefaultValueFactory = _ => -1 };
        var since = new Option<string?>("--since") { Description = "only lines newer than a duration (e.g. 10s, 5m) or an RFC3339 time" };
        var timestamps = new Option<bool>("--timestamps") { Description = "show each line's time" };
        var logs = new Command("logs", "Print a container's log (the CRI log file, read on this node as crictl does)") { logsId, follow, tail, since, timestamps };
        logs.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            using var connection = new CriConnection(ctx.RuntimeEndpoint, ctx.Timeout);
            var status = await CliRunner.CallAsync(connection, "ContainerStatus", o => new RuntimeService.RuntimeServiceClient(connection.Channel)
                .ContainerStatusAsync(new ContainerStatusRequest { ContainerId = parse.GetValue(logsId)! }, o).ResponseAsync, ct);
            var path = status.Status.LogPath;
            if (string.IsNullOrEmpty(path))
            {
                throw new CliFailure(ExitCodes.RuntimeError, $"container {status.Status.Id} has no log file (its pod has no log_directory or the container no log_path)");
            }

            DateTimeOffset? after = null;
            if (parse.GetValue(since) is { Length: > 0 } s)
            {
                after = DateTimeOffset.TryParse(s, CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind, out var t)
                    ? t
                    : DateTimeOffset.UtcNow - CliContext.ParseTimeout(s);
            }

            var stamps = parse.GetValue(timestamps);
            string Render(CriLogLine l) => stamps ? $"{l.Time.UtcDateTime:yyyy-MM-ddTHH:mm:ss.fffffffZ} {l.Content}" : l.Content;
            async Task WriteAsync(CriLogLine l)
            {
                if (after is null || l.Time > after)
                {
                    await (l.Stream == "stderr" ? CliRunner.Error : output).WriteLineAsync(Render(l));
                }
            }

            await using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            using var reader = new StreamReader(file);
            var lines = new List<string>();
            string? raw;
            while ((raw = await reader.ReadLineAsync(ct)) is not null)
            {
                lines.Add(raw);
            }

            var joiner = new CriLogJoiner();
            var whole = lines.SelectMany(joiner.Add).ToList();
            var n = parse.GetValue(tail);
            foreach (var l in n >= 0 ? whole.TakeLast(n) : whole)
            {
                await WriteAsync(l);
            }

            while (parse.GetValue(follow) && !ct.IsCancellationRequested)
            {
                raw = await reader.ReadLineAsync(ct);
                if (raw is null)
                {
                    await Task.Delay(200, ct);
                    continue;
                }

                foreach (var l in joiner.Add(raw))
                {
                    await WriteAsync(l);
                }
            }
        }));
        yield return logs;

        var statsId = new Argument<string?>("container-id") { Arity = ArgumentArity.ZeroOrOne };
        var statsCommand = new Command("stats", "Show containers' CPU, memory and writable-layer use") { statsId };
        statsCommand.SetAction((parse, ct) => Call(parse, global, output, async (client, o) =>
        {
            var filter = new ContainerStatsFilter { Id = parse.GetValue(statsId) ?? "" };
            // CPU % needs two samples, as crictl takes them.
            var first = await client.ListContainerStatsAsync(new ListContainerStatsRequest { Filter = filter }, o);
            await Task.Delay(1000, ct);
            var second = await client.ListContainerStatsAsync(new ListContainerStatsRequest { Filter = filter }, o);
            var format = OutputFormats.Parse(parse.GetValue(global.Output), OutputFormat.Table);
            if (format != OutputFormat.Table)
            {
                new Renderer(format, output).Document(Renderer.ToJson(second));
                return;
            }

            var before = first.Stats.ToDictionary(s => s.Attributes.Id, StringComparer.Ordinal);
            var rows = second.Stats.Select(s =>
            {
                var cpu = "-";
                if (before.TryGetValue(s.Attributes.Id, out var b) && s.Cpu is not null && b.Cpu is not null && s.Cpu.Timestamp > b.Cpu.Timestamp)
                {
                    var used = (double)(s.Cpu.UsageCoreNanoSeconds.Value - b.Cpu.UsageCoreNanoSeconds.Value);
                    cpu = (used / (s.Cpu.Timestamp - b.Cpu.Timestamp) * 100).ToString("0.00", CultureInfo.InvariantCulture);
                }

                return new[]
                {
                    s.Attributes.Id[..13], s.Attributes.Metadata.Name, cpu,
                    ImageCommands.HumanSize((long)(s.Memory?.WorkingSetBytes?.Value ?? 0)),
                    ImageCommands.HumanSize((long)(s.WritableLayer?.UsedBytes?.Value ?? 0)),
                    (s.WritableLayer?.InodesUsed?.Value ?? 0).ToString(CultureInfo.InvariantCulture),
                };
            }).ToList();
            await Columns.WriteAsync(output, ["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"], rows);
        }, ct));
        yield return statsCommand;

        var events = new Command("events", "Stream container lifecycle events (CRI GetContainerEvents) until interrupted");
        events.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            using var connection = new CriConnection(ctx.RuntimeEndpoint, TimeSpan.FromDays(365));
            connection.CheckSocketExists();
            try
            {
                using var call = new RuntimeService.RuntimeServiceClient(connection.Channel).GetContainerEvents(new GetEventsRequest(), cancellationToken: ct);
                while (await call.ResponseStream.MoveNext(ct))
                {
                    var e = call.ResponseStream.Current;
                    var time = DateTimeOffset.FromUnixTimeMilliseconds(e.CreatedAt / 1_000_000).UtcDateTime;
                    await output.WriteLineAsync($"{time:yyyy-MM-ddTHH:mm:ss.fffZ} {e.ContainerEventType} {e.ContainerId[..13]} pod={e.PodSandboxStatus?.Metadata?.Name}");
                    await output.FlushAsync(ct);
                }
            }
            catch (Grpc.Core.RpcException e) when (e.StatusCode != Grpc.Core.StatusCode.Cancelled)
            {
                throw connection.Explain(e, "GetContainerEvents");
            }
            catch (Grpc.Core.RpcException)
            {
            }
            catch (OperationCanceledException)
            {
            }
        }));
        yield return events;

        var inspectIds = new Argument<string[]>("container-id") { Arity = ArgumentArity.OneOrMore };
        var inspect = new Command("inspect", "Show containers' status") { inspectIds };
        inspect.SetAction((parse, ct) => Call(parse, global, output, async (client, o) =>
        {
            foreach (var id in parse.GetValue(inspectIds)!)
            {
                var r = await client.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = id, Verbose = true }, o);
                Document(parse, global, output, r.Status, r.Info);
            }
        }, ct));
        yield return inspect;

        var inspectpIds = new Argument<string[]>("pod-id") { Arity = ArgumentArity.OneOrMore };
        var inspectp = new Command("inspectp", "Show pod sandboxes' status") { inspectpIds };
        inspectp.SetAction((parse, ct) => Call(parse, global, output, async (client, o) =>
        {
            foreach (var id in parse.GetValue(inspectpIds)!)
            {
                var r = await client.PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = id, Verbose = true }, o);
                Document(parse, global, output, r.Status, r.Info);
            }
        }, ct));
        yield return inspectp;
    }

    private static void Document(ParseResult parse, GlobalOptions global, TextWriter output, IMessage status, Google.Protobuf.Collections.MapField<string, string> info)
    {
        var doc = new JsonObject { ["status"] = Renderer.ToJson(status) };
        foreach (var (k, v) in info)
        {
            doc[k] = JsonNode.Parse(v);
        }

        new Renderer(OutputFormats.Parse(parse.GetValue(global.Output), OutputFormat.Json), output).Document(doc);
    }

    internal static T ReadConfig<T>(string path)
        where T : IMessage<T>, new()
    {
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliUsageException($"cannot read {path}: {e.Message}");
        }

        // crictl takes JSON or YAML; YAML is read into JSON first.
        if (!text.TrimStart().StartsWith('{'))
        {
            try
            {
                text = YamlReader.ToJson(text)?.ToJsonString() ?? "{}";
            }
            catch (YamlDotNet.Core.YamlException e)
            {
                throw new CliUsageException($"{path} is neither JSON nor valid YAML: {e.Message}");
            }
        }

        try
        {
            return Parser.Parse<T>(text);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new CliUsageException($"{path} is not a valid {typeof(T).Name} in crictl's form: {e.Message}");
        }
    }

    private static string Ago(long nanos)
    {
        var age = DateTimeOffset.UtcNow - DateTimeOffset.FromUnixTimeMilliseconds(nanos / 1_000_000);
        return age.TotalSeconds < 60 ? $"{(int)age.TotalSeconds} seconds ago" : age.TotalMinutes < 60 ? $"{(int)age.TotalMinutes} minutes ago" : $"{(int)age.TotalHours} hours ago";
    }

    /// <summary>The CRI call behind each verb, so a failure names it.</summary>
    private static readonly Dictionary<string, string> RpcOf = new(StringComparer.Ordinal)
    {
        ["runp"] = "RunPodSandbox", ["create"] = "CreateContainer", ["start"] = "StartContainer", ["run"] = "RunPodSandbox+CreateContainer+StartContainer",
        ["stop"] = "StopContainer", ["rm"] = "RemoveContainer", ["stopp"] = "StopPodSandbox", ["rmp"] = "RemovePodSandbox",
        ["ps"] = "ListContainers", ["pods"] = "ListPodSandbox", ["inspect"] = "ContainerStatus", ["inspectp"] = "PodSandboxStatus",
        ["exec"] = "ExecSync", ["update"] = "UpdateContainerResources", ["stats"] = "ListContainerStats", ["logs"] = "ContainerStatus",
    };

    private static Task<int> Call(ParseResult parse, GlobalOptions global, TextWriter output,
        Func<RuntimeService.RuntimeServiceClient, Grpc.Core.CallOptions, Task> call, CancellationToken ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            using var connection = new CriConnection(ctx.RuntimeEndpoint, parse.GetValue(global.Timeout) is null ? TimeSpan.FromMinutes(2) : ctx.Timeout);
            var rpc = "runtime.v1.RuntimeService/" + RpcOf.GetValueOrDefault(parse.CommandResult.Command.Name, parse.CommandResult.Command.Name);
            await CliRunner.CallAsync<bool>(connection, rpc, async options =>
            {
                await call(new RuntimeService.RuntimeServiceClient(connection.Channel), options);
                return true;
            }, ct);
        });
}
