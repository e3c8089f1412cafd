using System.Text.Json.Nodes;
using Crest.Cri.Mapping;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Daemon.Cri;

internal sealed partial class CriRuntimeService
{
    /// <summary>The reason a RUNNING container that a live migration keeps frozen reports.</summary>
    internal const string MigrationHoldReason = "FrozenForMigration";

    /// <summary>
    /// CRI ContainerStatus: state, times, exit code, image, mounts and the user the processes run as; NotFound when there
    /// is no such container. With <c>verbose</c>, <c>info["info"]</c> holds the pid, handler, snapshot and the OCI
    /// runtime spec as JSON, as containerd returns them. A container a live migration holds frozen reports RUNNING with
    /// reason <see cref="MigrationHoldReason"/> and a message saying how the hold ends (and <c>info.migrationHold</c>).
    /// </summary>
    public override async Task<ContainerStatusResponse> ContainerStatus(ContainerStatusRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var c = await containers.GetAsync(request.ContainerId, context.CancellationToken);
        var status = new ContainerStatus
        {
            Id = c.Id,
            Metadata = CriMapping.Metadata(c.Spec),
            State = CriMapping.ToCri(c.State),
            CreatedAt = CriMapping.Nanos(c.CreatedAt),
            StartedAt = CriMapping.Nanos(c.StartedAt),
            FinishedAt = CriMapping.Nanos(c.FinishedAt),
            ExitCode = c.ExitCode,
            Image = new ImageSpec { Image = c.Spec.Image, UserSpecifiedImage = c.Spec.UserSpecifiedImage ?? "" },
            ImageRef = c.ImageRef,
            ImageId = c.ImageId,
            Reason = c.Reason,
            Message = c.Message,
            LogPath = c.LogFile,
        };
        if (c.State == Crest.Core.ContainerState.Running && c.MigrationHold is { } hold)
        {
            // Running to the CRI (its processes exist), but frozen: say why, and what ends it.
            status.Reason = MigrationHoldReason;
            status.Message = $"frozen for a live migration since {hold.Since.UtcDateTime:O}; the migration resumes or kills it. If crest migrate is gone: "
                + $"crest resume {c.Id} runs it here again (only if its copy on the target is gone), crest rm {c.Id} ends it (when the copy runs on the target)";
        }

        status.Labels.Add(c.Spec.Labels.ToDictionary());
        status.Annotations.Add(c.Spec.Annotations.ToDictionary());
        status.Mounts.Add(c.Spec.Mounts.Select(CriMapping.ToCri));
        status.User = CriMapping.ToCri(c.User);
        var response = new ContainerStatusResponse { Status = status };
        if (request.Verbose)
        {
            var runtimeSpec = await containers.ReadRuntimeSpecAsync(c.Id, context.CancellationToken);
            response.Info["info"] = new JsonObject
            {
                ["pid"] = c.Pid,
                ["sandboxID"] = c.SandboxId,
                ["runtimeHandler"] = c.RuntimeHandler,
                ["snapshotKey"] = c.SnapshotKey,
                ["restored"] = c.Restored,
                ["migrationHold"] = c.MigrationHold is { } held ? new JsonObject
                {
                    ["since"] = held.Since.UtcDateTime.ToString("O", System.Globalization.CultureInfo.InvariantCulture),
                    ["pageServerPid"] = held.PageServerPid,
                } : null,
                // JsonValue.Create takes no object or array: the spec is parsed into nodes.
                ["runtimeSpec"] = runtimeSpec is { } spec ? JsonNode.Parse(spec.GetRawText()) : null,
            }.ToJsonString();
        }

        return response;
    }
}
