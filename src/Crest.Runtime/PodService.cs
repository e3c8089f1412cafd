using Crest.Core;

namespace Crest.Runtime;

/// <summary>Pod-level operations that span the pod's containers: stop and remove.</summary>
public sealed class PodService(SandboxService sandboxes, ContainerService containers)
{
    /// <summary>Stops every container of the pod, then the pod. Idempotent.</summary>
    public async Task StopAsync(string sandboxId, CancellationToken ct)
    {
        var sandbox = await sandboxes.FindAsync(sandboxId, ct).ConfigureAwait(false);
        if (sandbox is null)
        {
            return; // CRI: stopping a pod that is gone succeeds.
        }

        using var exclusive = await sandboxes.LockAsync(sandbox.Id, ct).ConfigureAwait(false);
        // Read again under the lock: a removal that ran while this call waited must not be written back.
        sandbox = await sandboxes.FindAsync(sandbox.Id, ct).ConfigureAwait(false);
        if (sandbox is null)
        {
            return;
        }

        foreach (var c in (await containers.ListAsync(ct).ConfigureAwait(false)).Where(c => c.SandboxId == sandbox.Id))
        {
            await containers.StopAsync(c.Id, TimeSpan.Zero, ct).ConfigureAwait(false);
        }

        CrashPoints.Hit(CrashPoints.PodStopContainersStopped);

        await sandboxes.StopAsync(sandbox, ct).ConfigureAwait(false);
    }

    /// <summary>Removes every container of the pod and the pod itself. Idempotent.</summary>
    public async Task RemoveAsync(string sandboxId, CancellationToken ct)
    {
        var sandbox = await sandboxes.FindAsync(sandboxId, ct).ConfigureAwait(false);
        if (sandbox is null)
        {
            return;
        }

        using var exclusive = await sandboxes.LockAsync(sandbox.Id, ct).ConfigureAwait(false);
        // Read again under the lock: a removal that ran while this call waited must not be written back.
        sandbox = await sandboxes.FindAsync(sandbox.Id, ct).ConfigureAwait(false);
        if (sandbox is null)
        {
            return;
        }

        foreach (var c in (await containers.ListAsync(ct).ConfigureAwait(false)).Where(c => c.SandboxId == sandbox.Id))
        {
            await containers.RemoveAsync(c.Id, ct).ConfigureAwait(false);
        }

        CrashPoints.Hit(CrashPoints.PodRemoveContainersRemoved);

        await sandboxes.RemoveAsync(sandbox, ct).ConfigureAwait(false);
    }
}
