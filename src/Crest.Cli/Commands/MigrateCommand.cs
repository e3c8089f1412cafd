using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Crest.Cli.Migration;
using Crest.Cli.Output;
using Runtime.V1;

namespace Crest.Cli.Commands;

/// <summary>
/// <c>crest migrate CONTAINER --to ENDPOINT</c>: live-migrates a running container from the node of
/// <c>--runtime-endpoint</c> to the node at <c>--to</c> (both crestd), by <see cref="MigrationOrchestrator"/>. The
/// checkpoint archive streams from the source through this client to the target over the two sockets, or (<c>--via</c>)
/// travels through a registry as a checkpoint OCI image.
/// </summary>
internal static class MigrateCommand
{
    public static Command Create(GlobalOptions global, TextWriter output)
    {
        var id = new Argument<string>("container-id") { Description = "the running container to move (on --runtime-endpoint's node)" };
        var to = new Option<string>("--to") { Description = "the target node's crestd endpoint (unix:///path/to.sock)", Required = true };
        var pod = new Option<string?>("--pod", "-p") { Description = "an existing ready pod on the target to restore into" };
        var podConfig = new Option<string?>("--pod-config") { Description = "a pod config (crictl JSON/YAML) for a new pod on the target; removed again if the migration fails" };
        var via = new Option<string?>("--via")
        {
            Description = "REGISTRY/REPO to carry the checkpoint through as a checkpoint OCI image (tag migration-ID), which stays there; "
                + "the source pushes it, the target pulls it by digest. Without it the archive streams from the source through crest to the target",
        };
        var strategy = new Option<string?>("--strategy") { Description = "stop-copy (default) or post-copy (memory faulted in from the source after the switch); pre-copy is refused with the reason" };
        var pageServer = new Option<string?>("--page-server-address") { Description = "post-copy: the source node's IP address its page server listens on, reachable from the target (default 127.0.0.1: both nodes on one host)" };
        var deadline = new Option<long>("--timeout-seconds") { Description = "the source checkpoint's deadline (below the node's default, the default applies)" };
        var keepAddress = new Option<bool>("--keep-address")
        {
            Description = "give the new target pod (--pod-config) the source pod's address and move established TCP connections; the source pod is removed after the switch. Needs a target network with the CNI ips capability, and a network that routes the address to the target",
        };
        var noRootfsRounds = new Option<bool>("--no-rootfs-rounds")
        {
            Description = "carry the whole rootfs diff in the frozen window instead of sending it in rounds while the container runs (for comparison)",
        };
        var noPageServerTls = new Option<bool>("--no-page-server-tls")
        {
            Description = "post-copy: serve the memory in the clear, without TLS (anyone who reaches the page server's port can read it); for a CRIU built without TLS support, or for comparison",
        };
        var waitForNode = new Option<int?>("--wait-for-node")
        {
            Description = "seconds the ending steps (kill or resume the source, remove the target's copy) wait for a node whose crestd does not answer (default 60)",
        };
        var command = new Command("migrate", "Live-migrate a running container to another crestd node: pre-stage, freeze, copy, restore, then remove the source")
        {
            id, to, pod, podConfig, via, strategy, deadline, pageServer, keepAddress, noRootfsRounds, noPageServerTls, waitForNode,
        };
        command.Subcommands.Add(MigratePodCommand.Create(global, output));
        command.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            var chosen = MigrationStrategies.Parse(parse.GetValue(strategy));
            var podId = parse.GetValue(pod);
            var podConfigPath = parse.GetValue(podConfig);
            if ((podId is null) == (podConfigPath is null))
            {
                throw new CliUsageException("migrate needs exactly one of --pod POD (an existing pod on the target) or --pod-config pod.json (a new one)");
            }

            var request = new MigrationRequest(parse.GetValue(id)!, chosen, podId, podConfigPath is null ? null : PodCommands.ReadConfig<PodSandboxConfig>(podConfigPath))
            {
                FreezeTimeoutSeconds = Math.Max(0, parse.GetValue(deadline)),
                PageServerAddress = parse.GetValue(pageServer) ?? "127.0.0.1",
                KeepAddress = parse.GetValue(keepAddress),
                RootfsRounds = !parse.GetValue(noRootfsRounds),
                PageServerTls = !parse.GetValue(noPageServerTls),
                Via = MigrationOrchestrator.CheckVia(parse.GetValue(via)),
            };
            var report = await OrchestrateAsync(ctx, parse, global, to, waitForNode, (o, token) => o.RunAsync(request, token), ct);
            await WriteReportAsync(ctx, report);
        }));
        return command;
    }

    /// <summary>
    /// Runs a migration between the node of <c>--runtime-endpoint</c> and the one at <paramref name="to"/> (a container's
    /// or a pod's): the two connections, the orchestrator with its progress lines and <c>--wait-for-node</c>, and the exit
    /// code a failure maps to (Unreachable before the freeze, RuntimeError after).
    /// </summary>
    internal static async Task<T> OrchestrateAsync<T>(CliContext ctx, ParseResult parse, GlobalOptions global, Option<string> to, Option<int?> waitForNode,
        Func<MigrationOrchestrator, CancellationToken, Task<T>> run, CancellationToken ct)
    {
        var timeout = parse.GetValue(global.Timeout) is null ? TimeSpan.FromMinutes(10) : ctx.Timeout;
        using var sourceConnection = new CriConnection(ctx.RuntimeEndpoint, timeout);
        using var targetConnection = new CriConnection(CriEndpoint.Parse(parse.GetValue(to)!), timeout);
        var orchestrator = new MigrationOrchestrator(new GrpcMigrationNode(sourceConnection), new GrpcMigrationNode(targetConnection),
            line => CliRunner.Error.WriteLine($"[{DateTime.UtcNow:HH:mm:ss.fff}] {line}"), TimeProvider.System)
        {
            NodeReturnTimeout = parse.GetValue(waitForNode) is { } seconds
                ? (seconds >= 0 ? TimeSpan.FromSeconds(seconds) : throw new CliUsageException($"--wait-for-node {seconds}: expected a number of seconds, 0 or more"))
                : MigrationOrchestrator.DefaultNodeReturnTimeout,
        };
        try
        {
            return await run(orchestrator, ct);
        }
        catch (MigrationFailedException e)
        {
            throw new CliFailure(ExitCodes.RuntimeError, e.Message);
        }
        catch (NodeUnavailableException e)
        {
            // Before the freeze: nothing was changed on the source.
            throw new CliFailure(ExitCodes.Unreachable, e.Message);
        }
    }

    /// <summary>Rootfs rounds as the JSON report lists them (a container's, and each container's of a pod).</summary>
    internal static JsonArray RoundsJson(IReadOnlyList<RootfsRoundReport> rounds) => new([.. rounds.Select(x => (JsonNode)new JsonObject
    {
        ["round"] = x.Round,
        ["files"] = x.Files,
        ["bytes"] = x.Bytes,
        ["deleted"] = x.Deleted,
        ["archiveBytes"] = x.ArchiveBytes,
    })]);

    private static async Task WriteReportAsync(CliContext ctx, MigrationReport r)
    {
        static string Ms(TimeSpan? t) => t is { } v ? v.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture) : "unknown";
        if (ctx.Format != OutputFormat.Table)
        {
            var doc = new JsonObject
            {
                ["sourceContainerId"] = r.SourceContainerId,
                ["containerId"] = r.TargetContainerId,
                ["podSandboxId"] = r.TargetPodId,
                ["strategy"] = MigrationStrategies.Name(r.Strategy),
                ["bytesBeforeSwitch"] = r.BytesBeforeSwitch,
                ["bytesDuringSwitch"] = r.BytesDuringSwitch,
                ["bytesAfterSwitch"] = r.BytesAfterSwitch,
                ["rootfsRounds"] = RoundsJson(r.RootfsRounds),
                ["frozenRootfsBytes"] = r.FrozenRootfsBytes,
                ["pageTransferMs"] = r.PageTransfer is { } pt ? (long)pt.TotalMilliseconds : null,
                ["frozenMs"] = (long)r.Frozen.TotalMilliseconds,
                ["downtimeMs"] = r.Downtime is { } d ? (long)d.TotalMilliseconds : null,
                ["lastSourceLine"] = r.LastSourceLine?.UtcDateTime.ToString("O", CultureInfo.InvariantCulture),
                ["firstTargetLine"] = r.FirstTargetLine?.UtcDateTime.ToString("O", CultureInfo.InvariantCulture),
                ["totalMs"] = (long)r.Total.TotalMilliseconds,
                ["checkpointImage"] = r.CheckpointImage,
            };
            ctx.Renderer().Document(doc);
            return;
        }

        await ctx.Out.WriteLineAsync($"Migrated {r.SourceContainerId} -> {r.TargetContainerId} (pod {r.TargetPodId}), {MigrationStrategies.Name(r.Strategy)}");
        await ctx.Out.WriteLineAsync($"Downtime:  {Ms(r.Downtime)} ms (the workload's last log line on the source to its first on the target)");
        await ctx.Out.WriteLineAsync($"Frozen:    {Ms(r.Frozen)} ms (freeze to the target running)");
        await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"Moved:     {r.BytesBeforeSwitch} bytes before the switch (base image, {r.RootfsRounds.Count} rootfs rounds), {r.BytesDuringSwitch} bytes during it (checkpoint, {r.FrozenRootfsBytes} of them rootfs)")
            + (r.Strategy == MigrationStrategy.PostCopy ? string.Create(CultureInfo.InvariantCulture, $", {r.BytesAfterSwitch} bytes after it (memory, in {Ms(r.PageTransfer)} ms)") : ""));
        if (r.CheckpointImage is not null)
        {
            await ctx.Out.WriteLineAsync($"Through:   {r.CheckpointImage} (the checkpoint image stays in the registry)");
        }

        await ctx.Out.WriteLineAsync($"Total:     {Ms(r.Total)} ms");
    }
}
