using System.Text.Json.Nodes;
using Crest.Core;
using Crest.Linux;

namespace Crest.Runtime;

/// <summary>Whether checkpoint/restore is switched on, and with which CRIU.</summary>
public sealed record CheckpointSwitch(bool Enabled, bool RestoreViaCreate);

/// <summary>
/// How crestd itself is served, for operators reading `crest info`: its Prometheus endpoint (empty when off) and
/// whether systemd runs it (the unit's name when it does).
/// </summary>
public sealed record ServiceFacts(string MetricsAddress = "", string? SystemdUnit = null);

/// <summary>
/// Computes the CRI Status from real checks: the default OCI runtime and conmon answer (RuntimeReady),
/// a CNI network with all its plugins exists (NetworkReady), and CRIU is present and new enough
/// (CheckpointReady, Crest's own condition: a node without CRIU still runs pods).
/// </summary>
public sealed partial class NodeStatusService(
    RuntimeOptions runtime,
    CniOptions cni,
    CheckpointSwitch checkpoint,
    RuntimeHandlerProbe handlerProbe,
    ICriuProbe criuProbe,
    CrestPaths paths,
    ServiceFacts? service = null)
{
    public async Task<NodeStatus> GetAsync(CancellationToken ct)
    {
        var handlers = await Task.WhenAll(runtime.Handlers.Select(h => handlerProbe.ProbeAsync(h, ct))).ConfigureAwait(false);
        var criu = await criuProbe.ProbeAsync(ct).ConfigureAwait(false);
        var network = CniConfigProbe.Probe(cni);
        var conmon = ExecutableSearch.Resolve(runtime.ConmonPath);

        var conditions = new List<RuntimeCondition>
        {
            RuntimeReadyCondition(handlers, conmon),
            network.Usable
                ? RuntimeCondition.Ready(RuntimeCondition.NetworkReady)
                : new RuntimeCondition(RuntimeCondition.NetworkReady, false, "NetworkPluginNotReady", network.Problem!),
            CheckpointCondition(criu),
            PodCheckpointCondition(criu),
        };

        var detail = new Dictionary<string, JsonNode?>(StringComparer.Ordinal)
        {
            ["ociRuntimes"] = new JsonArray([.. handlers.Select(h => (JsonNode)new JsonObject
            {
                ["name"] = h.Name,
                ["path"] = h.BinaryPath,
                ["version"] = h.Version,
                ["default"] = h.Name == runtime.DefaultHandler,
                ["problem"] = h.Problem,
            })]),
            ["conmon"] = new JsonObject { ["path"] = conmon ?? runtime.ConmonPath, ["found"] = conmon is not null },
            ["criu"] = new JsonObject
            {
                ["path"] = criu.Path,
                ["version"] = criu.Version,
                ["versionNumber"] = criu.VersionNumber,
                ["problem"] = criu.Problem,
            },
            ["checkpoint"] = new JsonObject
            {
                ["enabled"] = checkpoint.Enabled,
                ["restoreViaCreate"] = checkpoint.RestoreViaCreate,
            },
            ["cni"] = new JsonObject
            {
                ["confDir"] = cni.ConfDir,
                ["pluginDirs"] = Strings(cni.PluginDirs),
                ["configFile"] = network.ConfigFile,
                ["network"] = network.NetworkName,
                ["plugins"] = Strings(network.PluginTypes),
            },
            ["cgroupDriver"] = runtime.CgroupDriver == CgroupDriver.Systemd ? "systemd" : "cgroupfs",
            ["paths"] = new JsonObject
            {
                ["root"] = paths.Root,
                ["state"] = paths.State,
                ["socket"] = paths.Socket,
                ["database"] = paths.Database,
            },
            ["service"] = new JsonObject
            {
                ["metricsAddress"] = service?.MetricsAddress is { Length: > 0 } metrics ? $"http://{metrics}/metrics" : "off ([metrics] address)",
                ["systemdUnit"] = service?.SystemdUnit ?? "none: crestd was not started by systemd (the package's unit is crestd.service)",
            },
        };

        return new NodeStatus(conditions, handlers, detail);
    }

    private static JsonArray Strings(IEnumerable<string> values) => new([.. values.Select(v => (JsonNode?)v)]);

    private RuntimeCondition RuntimeReadyCondition(IReadOnlyList<RuntimeHandlerStatus> handlers, string? conmon)
    {
        var defaultHandler = handlers.FirstOrDefault(h => h.Name == runtime.DefaultHandler);
        if (defaultHandler is null)
        {
            return new RuntimeCondition(RuntimeCondition.RuntimeReady, false, "DefaultRuntimeNotConfigured",
                $"the default runtime handler '{runtime.DefaultHandler}' is not among the configured handlers ({string.Join(", ", handlers.Select(h => h.Name))}); fix [runtime] default_handler");
        }

        if (!defaultHandler.Available)
        {
            return new RuntimeCondition(RuntimeCondition.RuntimeReady, false, "OciRuntimeNotFound", defaultHandler.Problem!);
        }

        if (conmon is null)
        {
            return new RuntimeCondition(RuntimeCondition.RuntimeReady, false, "ConmonNotFound",
                $"conmon '{runtime.ConmonPath}' was not found; every container runs under conmon; install it (make deps) or set [runtime] conmon_path");
        }

        return RuntimeCondition.Ready(RuntimeCondition.RuntimeReady);
    }

    private RuntimeCondition CheckpointCondition(CriuInfo criu)
    {
        if (!checkpoint.Enabled)
        {
            return new RuntimeCondition(RuntimeCondition.CheckpointReady, false, "CheckpointDisabled",
                "checkpoint/restore is disabled by configuration ([checkpoint] enabled = false)");
        }

        return criu.Usable
            ? RuntimeCondition.Ready(RuntimeCondition.CheckpointReady)
            : new RuntimeCondition(RuntimeCondition.CheckpointReady, false, "CriuNotUsable", criu.Problem!);
    }

    /// <summary>KEP-5823's CheckpointPod and RestorePod are served: true exactly when container checkpoint is ready.</summary>
    private RuntimeCondition PodCheckpointCondition(CriuInfo criu)
    {
        var container = CheckpointCondition(criu);
        return container.Status
            ? RuntimeCondition.Ready(RuntimeCondition.PodCheckpointReady)
            : container with { Type = RuntimeCondition.PodCheckpointReady };
    }
}
