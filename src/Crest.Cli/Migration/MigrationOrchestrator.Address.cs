using Crest.Core;
using Runtime.V1;

namespace Crest.Cli.Migration;

// --keep-address: the target pod is made with the source pod's address (the CNI ips capability, asked for through
// Crest's pod annotation), CRIU moves the established TCP connections, and the source pod, whose address now lives on
// the target, goes after the switch. Routing the address's traffic to the target is the network's part.
internal sealed partial class MigrationOrchestrator
{
    private static void CheckKeepAddress(MigrationRequest request)
    {
        if (request.KeepAddress && request.TargetPodId is not null)
        {
            throw new CliUsageException(
                $"--keep-address needs --pod-config: the target pod is made with the source pod's address, and pod {request.TargetPodId} already has an address of its own");
        }
    }

    /// <summary>The target pod's config, asking its network for the source pod's addresses.</summary>
    private PodSandboxConfig WithSourceAddress(PodSandboxConfig config, SourceContainer container) =>
        WithSourceAddress(config, container.PodIps, $"pod {container.PodId} of container {container.Id}");

    /// <summary>The target pod's config, asking its network for <paramref name="sourceIps"/>, the addresses of <paramref name="whose"/> on the source.</summary>
    private PodSandboxConfig WithSourceAddress(PodSandboxConfig config, IReadOnlyList<string> sourceIps, string whose)
    {
        if (sourceIps.Count == 0)
        {
            throw new MigrationFailedException(
                $"--keep-address: {whose} on {source.Name} has no address of its own (does it use the node's network?); migrate without --keep-address");
        }

        var wanted = string.Join(",", sourceIps);
        if (config.Annotations.TryGetValue(PodAnnotations.NetworkIps, out var given) && given != wanted)
        {
            throw new CliUsageException(
                $"--keep-address gives the target pod the source pod's address {wanted}, but the pod config's annotation {PodAnnotations.NetworkIps} asks for {given}; remove it from the pod config");
        }

        var withAddress = config.Clone();
        withAddress.Annotations[PodAnnotations.NetworkIps] = wanted;
        progress($"pre-stage: the target pod asks {target.Name}'s network for the source pod's address {wanted} (annotation {PodAnnotations.NetworkIps})");
        return withAddress;
    }

    /// <summary>The target pod holds every address of the source pod: a network that ignored the request is caught before the freeze.</summary>
    private async Task ExpectSourceAddressAsync(string podId, SourceContainer container, CancellationToken ct)
    {
        var got = await target.PodIpsAsync(podId, ct).ConfigureAwait(false);
        var missing = container.PodIps.Except(got, StringComparer.Ordinal).ToList();
        if (missing.Count > 0)
        {
            throw new InvalidOperationException(
                $"--keep-address: pod {podId} on {target.Name} got the address {(got.Count == 0 ? "none" : string.Join(",", got))}, not the source pod's {string.Join(",", missing)}; "
                + "its CNI network must honour the ips capability (host-local with \"capabilities\": {\"ips\": true} on the plugin)");
        }
    }

    /// <summary>After the switch: the source pod, locked since the freeze, goes with its address.</summary>
    private async Task RemoveSourcePodAsync(SourceContainer container)
    {
        await source.RemovePodAsync(container.PodId, CancellationToken.None).ConfigureAwait(false);
        progress($"source pod: removed {container.PodId} from {source.Name}; its address {string.Join(",", container.PodIps)} now lives on {target.Name}");
    }
}
