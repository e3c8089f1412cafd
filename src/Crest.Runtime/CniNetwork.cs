using System.Text.Json;
using System.Text.Json.Nodes;
using Crest.Core;

namespace Crest.Runtime;

/// <summary>The outcome of a CNI ADD: the pod's addresses and the result to replay on DEL.</summary>
public sealed record CniAttachment(string Network, IReadOnlyList<string> Ips, string Result, string Config);

/// <summary>The pod network: attaches a pod's network namespace at RunPodSandbox and detaches it at stop or removal.</summary>
public interface INetwork
{
    /// <summary>Attaches the network namespace <paramref name="netns"/> of pod sandbox <paramref name="sandboxId"/>; returns its addresses and what DEL needs.</summary>
    Task<CniAttachment> AddAsync(string sandboxId, string netns, PodSpec pod, CancellationToken ct);

    /// <summary>Detaches the pod with the result and configuration its ADD used; state that is already gone is not an error.</summary>
    Task DelAsync(string sandboxId, string? netns, PodSpec pod, string? cachedResult, string? configUsedAtAdd, CancellationToken ct);
}

/// <summary>
/// Runs the configured CNI network (a .conflist: each plugin in order on ADD, in reverse on DEL, as the
/// CNI spec and libcni do), passing the pod's port mappings to plugins with the portMappings capability and the
/// addresses asked for by <see cref="PodAnnotations.NetworkIps"/> to plugins with the ips capability (CNI conventions).
/// </summary>
public sealed class CniNetwork(CniOptions options, ICommandRunner commands) : INetwork
{
    public const string InterfaceName = "eth0";

    public async Task<CniAttachment> AddAsync(string sandboxId, string netns, PodSpec pod, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(pod);
        var config = CurrentConfig();
        var (name, version, plugins) = Parse(config);
        var requested = RequestedIps(pod, strict: true);
        if (requested.Count > 0 && !plugins.Any(p => HasCapability(p, "ips")))
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"pod {pod.Namespace}/{pod.Name} asks for the address {string.Join(",", requested)} (annotation {PodAnnotations.NetworkIps}), but no plugin of CNI network {name} "
                + "declares the ips capability, so none would honour it; add \"capabilities\": {\"ips\": true} to the plugin whose IPAM gives the address (e.g. bridge with host-local), or leave the annotation out");
        }

        JsonNode? previous = null;
        foreach (var plugin in plugins)
        {
            var stdin = PluginConfig(plugin, name, version, previous, pod, requested);
            var result = await InvokeAsync("ADD", sandboxId, netns, pod, plugin, stdin, ct).ConfigureAwait(false);
            previous = JsonNode.Parse(result);
        }

        var ips = previous?["ips"]?.AsArray().Select(ip => ((string?)ip?["address"] ?? "").Split('/')[0]).Where(ip => ip.Length > 0).ToList() ?? [];
        return new CniAttachment(name, ips, previous?.ToJsonString() ?? "{}", config);
    }

    /// <summary>Tears the network down; errors from plugins whose state is already gone are tolerated, as the CNI spec asks of DEL.</summary>
    public async Task DelAsync(string sandboxId, string? netns, PodSpec pod, string? cachedResult, string? configUsedAtAdd, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(pod);
        var (name, version, plugins) = Parse(configUsedAtAdd ?? CurrentConfig());
        var previous = cachedResult is null ? null : JsonNode.Parse(cachedResult);
        var requested = RequestedIps(pod, strict: false);
        var failures = new List<string>();
        foreach (var plugin in plugins.AsEnumerable().Reverse())
        {
            var stdin = PluginConfig(plugin, name, version, previous, pod, requested);
            try
            {
                await InvokeAsync("DEL", sandboxId, netns ?? "", pod, plugin, stdin, ct).ConfigureAwait(false);
            }
            catch (CrestException e)
            {
                failures.Add(e.Message);
            }
        }

        if (failures.Count > 0)
        {
            throw new CrestException(ErrorKind.Internal, $"CNI DEL for pod sandbox {sandboxId}: {string.Join("; ", failures)}");
        }
    }

    private string CurrentConfig()
    {
        var probe = CniConfigProbe.Probe(options);
        return probe.Usable
            ? File.ReadAllText(probe.ConfigFile!)
            : throw new CrestException(ErrorKind.FailedPrecondition, $"the pod network is not ready: {probe.Problem}");
    }

    private static (string Name, string Version, List<JsonObject> Plugins) Parse(string config)
    {
        var doc = JsonNode.Parse(config)!.AsObject();
        var name = (string?)doc["name"] ?? "";
        var version = (string?)doc["cniVersion"] ?? "1.0.0";
        var plugins = doc["plugins"] is JsonArray list
            ? list.Select(p => p!.AsObject()).ToList()
            : [doc];
        return (name, version, plugins);
    }

    private static bool HasCapability(JsonObject plugin, string capability) =>
        plugin["capabilities"]?[capability] is JsonValue v && v.TryGetValue<bool>(out var on) && on;

    /// <summary>
    /// The addresses <see cref="PodAnnotations.NetworkIps"/> asks for, each an IP or IP/prefix. <paramref name="strict"/>
    /// (ADD) refuses a malformed entry; DEL passes on what parses, as its ADD did.
    /// </summary>
    internal static IReadOnlyList<string> RequestedIps(PodSpec pod, bool strict)
    {
        if (!pod.Annotations.TryGetValue(PodAnnotations.NetworkIps, out var value) || string.IsNullOrWhiteSpace(value))
        {
            return [];
        }

        var ips = new List<string>();
        foreach (var entry in value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            var slash = entry.IndexOf('/', StringComparison.Ordinal);
            var host = slash < 0 ? entry : entry[..slash];
            // Four dotted parts for IPv4: .NET also takes inet_aton's short forms (10.124.0), which CNI plugins do not.
            var valid = System.Net.IPAddress.TryParse(host, out var address)
                && (address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 || host.Count(c => c == '.') == 3)
                && (slash < 0 || (int.TryParse(entry[(slash + 1)..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var prefix)
                    && prefix <= (address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? 128 : 32)));
            if (valid)
            {
                ips.Add(entry);
            }
            else if (strict)
            {
                throw new CrestException(ErrorKind.InvalidArgument,
                    $"pod {pod.Namespace}/{pod.Name}: annotation {PodAnnotations.NetworkIps} holds \"{entry}\", which is not an IP address or IP/prefix; give addresses like 10.88.0.7 or 10.88.0.7/16, comma-separated");
            }
        }

        return ips;
    }

    private static string PluginConfig(JsonObject plugin, string name, string version, JsonNode? previous, PodSpec pod, IReadOnlyList<string> ips)
    {
        var config = plugin.DeepClone().AsObject();
        config["name"] = name;
        config["cniVersion"] = version;
        if (previous is not null)
        {
            config["prevResult"] = previous.DeepClone();
        }

        // The kubelet lists every declared containerPort; only those with a host port are mappings (portmap rejects 0).
        var mappings = pod.PortMappings.Where(p => p.HostPort > 0).ToList();
        var runtimeConfig = new JsonObject();
        if (HasCapability(config, "portMappings") && mappings.Count > 0)
        {
            runtimeConfig["portMappings"] = new JsonArray([.. mappings.Select(p => (JsonNode)new JsonObject
            {
                ["hostPort"] = p.HostPort,
                ["containerPort"] = p.ContainerPort,
                ["protocol"] = p.Protocol.ToLowerInvariant(),
                ["hostIP"] = p.HostIp ?? "",
            })]);
        }

        if (HasCapability(config, "ips") && ips.Count > 0)
        {
            runtimeConfig["ips"] = new JsonArray([.. ips.Select(ip => (JsonNode)JsonValue.Create(ip))]);
        }

        if (runtimeConfig.Count > 0)
        {
            config["runtimeConfig"] = runtimeConfig;
        }

        return config.ToJsonString();
    }

    private async Task<string> InvokeAsync(string command, string sandboxId, string netns, PodSpec pod, JsonObject plugin, string stdin, CancellationToken ct)
    {
        var type = (string?)plugin["type"] ?? throw new CrestException(ErrorKind.FailedPrecondition, "a CNI plugin has no type");
        var binary = options.PluginDirs.Select(d => Path.Combine(d, type)).FirstOrDefault(File.Exists)
            ?? throw new CrestException(ErrorKind.FailedPrecondition, $"CNI plugin {type} is not in {string.Join(":", options.PluginDirs)}");
        var result = await commands.RunAsync(new CommandLine(binary, [])
        {
            Environment = new Dictionary<string, string>
            {
                ["CNI_COMMAND"] = command,
                ["CNI_CONTAINERID"] = sandboxId,
                ["CNI_NETNS"] = netns,
                ["CNI_IFNAME"] = InterfaceName,
                ["CNI_PATH"] = string.Join(":", options.PluginDirs),
                ["CNI_ARGS"] = $"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.Namespace};K8S_POD_NAME={pod.Name};K8S_POD_INFRA_CONTAINER_ID={sandboxId};K8S_POD_UID={pod.Uid}",
            },
            StandardInput = stdin,
        }, ct).ConfigureAwait(false);
        if (result.ExitCode != 0)
        {
            var detail = result.StandardOutput.Trim().Length > 0 ? result.StandardOutput.Trim() : result.StandardError.Trim();
            try
            {
                using var err = JsonDocument.Parse(detail);
                detail = $"{err.RootElement.GetProperty("msg").GetString()} {(err.RootElement.TryGetProperty("details", out var dd) ? dd.GetString() : "")}".Trim();
            }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
            {
            }

            throw new CrestException(ErrorKind.Internal, $"CNI plugin {type} {command} for pod sandbox {sandboxId} failed: {detail}");
        }

        return command == "ADD" && result.StandardOutput.Trim().Length > 0 ? result.StandardOutput : previousOrEmpty(stdin);

        static string previousOrEmpty(string stdin) => JsonNode.Parse(stdin)?["prevResult"]?.ToJsonString() ?? "{}";
    }
}
