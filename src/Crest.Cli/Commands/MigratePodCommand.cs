using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Crest.Cli.Migration;
using Crest.Cli.Output;
using Runtime.V1;

namespace Crest.Cli.Commands;

/// <summary>
/// <c>crest migrate pod POD --to ENDPOINT --pod-config pod.json</c>: moves a whole running pod (every container, stop-copy or post-copy)
/// from the node of <c>--runtime-endpoint</c> into a new pod on the node at <c>--to</c>, by
/// <see cref="MigrationOrchestrator.RunPodAsync"/>. The pod checkpoint streams from the source through this client, or (<c>--via</c>) goes through a registry.
/// </summary>
internal static class MigratePodCommand
{
    public static Command Create(GlobalOptions global, TextWriter output)
    {
        var id = new Argument<string>("pod-id") { Description = "the ready pod to move, every container of it running (on --runtime-endpoint's node)" };
        var to = new Option<string>("--to") { Description = "the target node's crestd endpoint (unix:///path/to.sock)", Required = true };
        var podConfig = new Option<string>("--pod-config") { Description = "the config (crictl JSON/YAML) of the new pod on the target; removed again if the migration fails", Required = true };
        var strategy = new Option<string?>("--strategy") { Description = "stop-copy (default) or post-copy (each container's memory faulted in from a page server of its own on the source after the switch); pre-copy is refused with the reason" };
        var pageServer = new Option<string?>("--page-server-address") { Description = "post-copy: the source node's IP address its page servers listen on, reachable from the target (default 127.0.0.1: both nodes on one host)" };
        var noPageServerTls = new Option<bool>("--no-page-server-tls")
        {
            Description = "post-copy: serve the memory in the clear, without TLS (anyone who reaches a page server's port can read it); for a CRIU built without TLS support, or for comparison",
        };
        var deadline = new Option<long>("--timeout-seconds") { Description = "the source pod checkpoint's deadline (0: the call's own)" };
        var noRootfsRounds = new Option<bool>("--no-rootfs-rounds")
        {
            Description = "carry each container's whole rootfs diff in the frozen window instead of sending it in rounds while the pod runs (for comparison)",
        };
        var keepAddress = new Option<bool>("--keep-address")
        {
            Description = "give the new target pod the source pod's address and move the pod's established TCP connections. Needs a target network with the CNI ips capability, "
                + "and a network that routes the address to the target",
        };
        var via = new Option<string?>("--via")
        {
            Description = "REGISTRY/REPO to carry the pod checkpoint through as a pod checkpoint image (tag migration-ID), which stays there; "
                + "the source pushes it, the target pulls it by digest and RestorePod restores from it. Without it the pod checkpoint streams through crest",
        };
        var waitForNode = new Option<int?>("--wait-for-node")
        {
            Description = "seconds the ending steps (kill or resume the source containers, remove the target's pod) wait for a node whose crestd does not answer (default 60)",
        };
        var command = new Command("pod", "Live-migrate a whole running pod to another crestd node: freeze every container at one instant, copy, restore into a new pod, then remove the source pod")
        {
            id, to, podConfig, strategy, deadline, noRootfsRounds, keepAddress, via, pageServer, noPageServerTls, waitForNode,
        };
        command.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            var request = new PodMigrationRequest(parse.GetValue(id)!, MigrationStrategies.Parse(parse.GetValue(strategy)), PodCommands.ReadConfig<PodSandboxConfig>(parse.GetValue(podConfig)!))
            {
                FreezeTimeoutSeconds = Math.Max(0, parse.GetValue(deadline)),
                RootfsRounds = !parse.GetValue(noRootfsRounds),
                Via = MigrationOrchestrator.CheckVia(parse.GetValue(via)),
                KeepAddress = parse.GetValue(keepAddress),
                PageServerAddress = parse.GetValue(pageServer) ?? "127.0.0.1",
                PageServerTls = !parse.GetValue(noPageServerTls),
            };
            var report = await MigrateCommand.OrchestrateAsync(ctx, parse, global, to, waitForNode, (o, token) => o.RunPodAsync(request, token), ct);
            await WriteReportAsync(ctx, report);
        }));
        return command;
    }

    private static async Task WriteReportAsync(CliContext ctx, PodMigrationReport r)
    {
        static string Ms(TimeSpan? t) => t is { } v ? v.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture) : "unknown";
        if (ctx.Format != OutputFormat.Table)
        {
            ctx.Renderer().Document(new JsonObject
            {
                ["sourcePodSandboxId"] = r.SourcePodId,
                ["podSandboxId"] = r.TargetPodId,
                ["strategy"] = MigrationStrategies.Name(r.Strategy),
                ["containers"] = new JsonArray([.. r.Containers.Select(c => (JsonNode)new JsonObject
                {
                    ["name"] = c.Name,
                    ["sourceContainerId"] = c.SourceContainerId,
                    ["containerId"] = c.TargetContainerId,
                    ["downtimeMs"] = c.Downtime is { } d ? (long)d.TotalMilliseconds : null,
                    ["lastSourceLine"] = c.LastSourceLine?.UtcDateTime.ToString("O", CultureInfo.InvariantCulture),
                    ["firstTargetLine"] = c.FirstTargetLine?.UtcDateTime.ToString("O", CultureInfo.InvariantCulture),
                    ["rootfsRounds"] = MigrateCommand.RoundsJson(c.RootfsRounds),
                })]),
                ["bytesBeforeSwitch"] = r.BytesBeforeSwitch,
                ["bytesDuringSwitch"] = r.BytesDuringSwitch,
                ["bytesAfterSwitch"] = r.BytesAfterSwitch,
                ["pageTransferMs"] = r.PageTransfer is { } pt ? (long)pt.TotalMilliseconds : null,
                ["frozenRootfsBytes"] = r.FrozenRootfsBytes,
                ["frozenMs"] = (long)r.Frozen.TotalMilliseconds,
                ["downtimeMs"] = r.Downtime is { } dt ? (long)dt.TotalMilliseconds : null,
                ["totalMs"] = (long)r.Total.TotalMilliseconds,
                ["checkpointImage"] = r.CheckpointImage,
            });
            return;
        }

        await ctx.Out.WriteLineAsync($"Migrated pod {r.SourcePodId} -> {r.TargetPodId}, {MigrationStrategies.Name(r.Strategy)}");
        foreach (var c in r.Containers)
        {
            await ctx.Out.WriteLineAsync($"  {c.Name}: {c.SourceContainerId} -> {c.TargetContainerId}, downtime {Ms(c.Downtime)} ms");
        }

        await ctx.Out.WriteLineAsync($"Downtime:  {Ms(r.Downtime)} ms (the longest of the containers': each one's last log line on the source to its first on the target)");
        await ctx.Out.WriteLineAsync($"Frozen:    {Ms(r.Frozen)} ms (freeze to every container running on the target)");
        await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"Moved:     {r.BytesBeforeSwitch} bytes before the switch (base images, {r.Containers.Sum(c => c.RootfsRounds.Count)} rootfs rounds), {r.BytesDuringSwitch} bytes during it (the pod checkpoint, {r.FrozenRootfsBytes} of them rootfs)"));
        if (r.PageTransfer is { } transfer)
        {
            await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"Memory:    {r.BytesAfterSwitch} bytes after the switch, all arrived {transfer.TotalMilliseconds:0} ms after the pod ran on the target"));
        }

        if (r.CheckpointImage is not null)
        {
            await ctx.Out.WriteLineAsync($"Through:   {r.CheckpointImage} (the pod checkpoint image stays in the registry)");
        }

        await ctx.Out.WriteLineAsync($"Total:     {Ms(r.Total)} ms");
    }
}
