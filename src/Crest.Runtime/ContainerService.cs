using System.Globalization;
using Crest.Core;
using Crest.Linux;
using Crest.Oci;
using Microsoft.Extensions.Logging;

namespace Crest.Runtime;

/// <summary>
/// Containers: a rootfs that is one overlay mount over the image's snapshot chain (the snapshot leased for
/// the container's life) and config.json from the CRI config and the image, both made at CreateContainer; conmon +
/// runc/crun create and start it at StartContainer, as containerd makes its task only at start. State comes from conmon's exit files, so it survives crestd.
/// One partial file per concern: Create, Lifecycle (start, stop, update, remove), Recovery, Restore (the start of a
/// container made from a checkpoint), Checkpoint (the dump), Stats, Log, Exec, Streaming. This file holds what they
/// share: lookups, the state read from conmon's files, and teardown.
/// </summary>
public sealed partial class ContainerService(
    IRuntimeStore store,
    SandboxService sandboxes,
    ContainerBundles bundles,
    IOciRuntimeFactory runtimes,
    ILinux linux,
    RuntimeEvents events,
    ConmonExits exits,
    TimeProvider time,
    ILogger<ContainerService> logger,
    LazyPageTransfers? lazyPages = null)
{
    private readonly KeyedLock _locks = new();
    private readonly Lazy<IReadOnlyList<string>> _nodeCapabilities = new(() => SpecBuilder.CapabilityNames(linux.HeldCapabilities()));

    public async Task<ContainerRecord> GetAsync(string idOrPrefix, CancellationToken ct)
    {
        if (string.IsNullOrWhiteSpace(idOrPrefix))
        {
            throw new CrestException(ErrorKind.InvalidArgument, "a container ID is required");
        }

        var matches = (await store.ListContainersAsync(ct).ConfigureAwait(false)).Where(c => c.Id.StartsWith(idOrPrefix, StringComparison.Ordinal)).ToList();
        return matches.Count switch
        {
            1 => await RefreshAsync(matches[0], ct).ConfigureAwait(false) ?? throw Gone(idOrPrefix),
            0 => throw new CrestException(ErrorKind.NotFound, $"container {idOrPrefix} does not exist"),
            _ => throw new CrestException(ErrorKind.InvalidArgument, $"container ID prefix {idOrPrefix} is ambiguous: {matches.Count} containers match"),
        };
    }

    public async Task<IReadOnlyList<ContainerRecord>> ListAsync(CancellationToken ct)
    {
        var result = new List<ContainerRecord>();
        foreach (var c in await store.ListContainersAsync(ct).ConfigureAwait(false))
        {
            if (c.State != ContainerState.Creating && await RefreshAsync(c, ct).ConfigureAwait(false) is { } current)
            {
                result.Add(current);
            }
        }

        return result;
    }

    /// <summary>Called when conmon writes an exit file: the container's new state is recorded and announced at once.</summary>
    public async Task ObserveExitAsync(string id, CancellationToken ct)
    {
        if (await store.GetContainerAsync(id, ct).ConfigureAwait(false) is { } c)
        {
            await RefreshAsync(c, ct).ConfigureAwait(false);
        }
    }

    private static CrestException Gone(string idOrPrefix) => new(ErrorKind.NotFound, $"container {idOrPrefix} does not exist (it was removed meanwhile)");

    /// <summary>
    /// Reads conmon's exit file for a container that was created or running; null if the container was removed meanwhile.
    /// Callers hold no lock on the container (a list must not wait for a checkpoint), so the record is only written
    /// if it is still on record in the state it was read in: a removal or a stop racing this never sees its work undone.
    /// </summary>
    private async Task<ContainerRecord?> RefreshAsync(ContainerRecord c, CancellationToken ct)
    {
        if (c.State is not (ContainerState.Running or ContainerState.Created) || c.AwaitsProcess)
        {
            return c;
        }

        var bundle = bundles.For(c.Id);
        ContainerRecord updated;
        string? text = null;
        try
        {
            text = File.Exists(bundle.ExitFile) ? await File.ReadAllTextAsync(bundle.ExitFile, ct).ConfigureAwait(false) : null;
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            // Removed between the check and the read: a teardown is running; what is on record now says.
            return await store.GetContainerAsync(c.Id, ct).ConfigureAwait(false);
        }

        if (text is null)
        {
            // No exit file and no conmon: the monitor died (or the node rebooted and /run was emptied).
            if (ConmonAlive(bundle))
            {
                return c;
            }

            updated = Lost(c, "its conmon monitor is gone and recorded no exit code (killed, or the node rebooted)");
        }
        else
        {
            var code = int.TryParse(text.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) ? n : 255;
            var oom = File.Exists(bundle.OomMarker);
            var exitedAt = File.GetLastWriteTimeUtc(bundle.ExitFile);
            updated = c with
            {
                State = ContainerState.Exited,
                ExitCode = code,
                // A process that exits at once can write its exit file before StartContainer recorded the start.
                FinishedAt = c.StartedAt is { } started && started > exitedAt ? started : exitedAt,
                Reason = oom ? "OOMKilled" : code == 0 ? "Completed" : "Error",
                // A migration's hold ends with the process it kept frozen.
                MigrationHold = null,
            };
        }

        if (!await store.TryUpdateContainerAsync(updated, c.State, ct).ConfigureAwait(false))
        {
            // Someone else moved it on (started, stopped, removed) since it was read.
            return await store.GetContainerAsync(c.Id, ct).ConfigureAwait(false);
        }

        events.Publish(c.Id, c.SandboxId, LifecycleEvent.Stopped);
        return updated;
    }

    private ContainerRecord Lost(ContainerRecord c, string why) => c with
    {
        State = ContainerState.Exited,
        ExitCode = 255,
        Reason = "Unknown",
        Message = why,
        FinishedAt = time.GetUtcNow(),
        MigrationHold = null,
    };

    private async Task MarkLostAsync(ContainerRecord c, string why, CancellationToken ct)
    {
        if (await store.TryUpdateContainerAsync(Lost(c, why), c.State, ct).ConfigureAwait(false))
        {
            events.Publish(c.Id, c.SandboxId, LifecycleEvent.Stopped);
        }
    }

    private bool ConmonAlive(ContainerBundle bundle)
    {
        try
        {
            return int.TryParse(File.ReadAllText(bundle.ConmonPidFile).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && linux.IsAlive(pid);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Whether conmon records the container's exit within <paramref name="timeout"/> (woken by the exit file, not polled).</summary>
    private Task<bool> WaitExitAsync(string id, TimeSpan timeout, CancellationToken ct) => exits.WaitAsync(id, timeout, ct);

    /// <summary>Undoes everything a container holds, step by step; a step that fails is logged and the next still runs.</summary>
    private async Task TearDownAsync(ContainerRecord c, CancellationToken ct)
    {
        if (runtimes.TryFor(c.RuntimeHandler) is { } runtime)
        {
            await Step(c.Id, () => runtime.DeleteAsync(new RuncDeleteOptions { ContainerId = c.Id }, ct)).ConfigureAwait(false);
        }

        var bundle = bundles.For(c.Id);
        await Step(c.Id, () => { bundles.UnmountRootfs(bundle); return Task.CompletedTask; }).ConfigureAwait(false);
        // Left mounted only if crestd died while building the rootfs; a recursive delete must never walk into an image layer.
        await Step(c.Id, () => { bundles.UnmountIdMapped(bundle); return Task.CompletedTask; }).ConfigureAwait(false);
        // A checkpoint's work a migration still held (its tmpfs too): the directory reaper never deletes below a mount.
        await Step(c.Id, () => { RemoveCheckpointWork(bundle); return Task.CompletedTask; }).ConfigureAwait(false);
        // A restore that never started: an archive's page images may still be mounted in its restore directory.
        await Step(c.Id, () => { bundles.DeleteRestoreDirectory(bundle.RestoreDir); return Task.CompletedTask; }).ConfigureAwait(false);
        await Step(c.Id, () => { bundles.DeleteFiles(bundle); return Task.CompletedTask; }).ConfigureAwait(false);
        await Step(c.Id, () => bundles.ReleaseImageAsync(bundle, ct)).ConfigureAwait(false);
    }

    private async Task Step(string id, Func<Task> step)
    {
        try
        {
            await step().ConfigureAwait(false);
        }
        catch (Exception e) when (e is CrestException or IOException or UnauthorizedAccessException)
        {
            RuntimeLog.CleanupFailed(logger, id, e.Message);
        }
    }
}
