using System.Text.Json;
using Crest.Core;
using Crest.Oci;

namespace Crest.Runtime;

// The state machine after create: CREATED (no process yet) -> RUNNING (start: conmon, runc create and start) -> EXITED (stop, or the process ends) -> gone (remove).
public sealed partial class ContainerService
{
    public async Task StartAsync(string idOrPrefix, CancellationToken ct)
    {
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        using var exclusive = await _locks.AcquireAsync(c.Id, ct).ConfigureAwait(false);
        c = await GetAsync(c.Id, ct).ConfigureAwait(false);
        if (c.State != ContainerState.Created)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, c.Reason == "StartError"
                ? $"container {c.Id} is EXITED after a failed start ({c.Message}); only a CREATED container can be started: create it again"
                : $"container {c.Id} is {c.State}; only a CREATED container can be started");
        }

        var runtime = runtimes.For(c.RuntimeHandler);
        if (c.RestoreDir is not null)
        {
            await RestoreLockedAsync(c, runtime, ct).ConfigureAwait(false);
            return;
        }

        var sandbox = await sandboxes.GetAsync(c.SandboxId, ct).ConfigureAwait(false);
        if (sandbox.State != SandboxState.Ready)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"pod sandbox {sandbox.Id} is {sandbox.State}, not ready; container {c.Id} cannot be started in it");
        }

        try
        {
            // Neither step is cancellable: once the runtime has the container, the record must say so.
            if (c.AwaitsProcess)
            {
                var pid = await runtime.CreateAsync(ConmonCreateOptions.ForContainer(c, sandbox, bundles.For(c.Id)), CancellationToken.None).ConfigureAwait(false);
                CrashPoints.Hit(CrashPoints.ContainerRuncCreated);
                c = c with { Pid = pid };
                await store.PutContainerAsync(c, CancellationToken.None).ConfigureAwait(false);
            }

            await runtime.StartAsync(new RuncStartOptions { ContainerId = c.Id }, CancellationToken.None).ConfigureAwait(false);
        }
        catch (CrestException e)
        {
            // A bad executable, a mount the runtime refuses: the container ends EXITED, and the runtime forgets it.
            await Step(c.Id, () => runtime.DeleteAsync(new RuncDeleteOptions { ContainerId = c.Id, Force = true }, CancellationToken.None)).ConfigureAwait(false);
            await store.PutContainerAsync(c with { State = ContainerState.Exited, ExitCode = 128, Reason = "StartError", Message = e.Message, FinishedAt = time.GetUtcNow() }, CancellationToken.None).ConfigureAwait(false);
            events.Publish(c.Id, c.SandboxId, LifecycleEvent.Stopped);
            throw;
        }

        CrashPoints.Hit(CrashPoints.ContainerStartedUnrecorded);
        await store.PutContainerAsync(c with { State = ContainerState.Running, StartedAt = time.GetUtcNow() }, CancellationToken.None).ConfigureAwait(false);
        events.Publish(c.Id, c.SandboxId, LifecycleEvent.Started);
    }

    /// <summary>
    /// Stops a container: the image's stop signal (SIGTERM by default), then SIGKILL once <paramref name="timeout"/> passes.
    /// Idempotent (CRI): stopping a stopped container succeeds.
    /// </summary>
    public async Task StopAsync(string idOrPrefix, TimeSpan timeout, CancellationToken ct)
    {
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        using var exclusive = await _locks.AcquireAsync(c.Id, ct).ConfigureAwait(false);
        await StopLockedAsync(c.Id, timeout, ct).ConfigureAwait(false);
    }

    private async Task StopLockedAsync(string id, TimeSpan timeout, CancellationToken ct)
    {
        var c = await GetAsync(id, ct).ConfigureAwait(false);
        if (c.State is ContainerState.Exited or ContainerState.Creating)
        {
            return;
        }

        if (c.AwaitsProcess)
        {
            // Never started: there is no process and no monitor to ask.
            await store.PutContainerAsync(c with { State = ContainerState.Exited, ExitCode = 0, Reason = "Completed", FinishedAt = time.GetUtcNow() }, ct).ConfigureAwait(false);
            events.Publish(c.Id, c.SandboxId, LifecycleEvent.Stopped);
            return;
        }

        var runtime = runtimes.For(c.RuntimeHandler);
        if (c.State == ContainerState.Running && c.MigrationHold is not null)
        {
            // Frozen for a migration whose copy may run elsewhere: killed while frozen, never thawed to handle SIGTERM.
            await KillWhileFrozenAsync(c, ct).ConfigureAwait(false);
        }
        else if (c.State == ContainerState.Running && timeout > TimeSpan.Zero)
        {
            await runtime.KillAsync(new RuncKillOptions { ContainerId = c.Id, Signal = c.StopSignal }, ct).ConfigureAwait(false);
            if (await WaitExitAsync(c.Id, timeout, ct).ConfigureAwait(false))
            {
                await GetAsync(c.Id, ct).ConfigureAwait(false);
                await DeleteStoppedAsync(runtime, c.Id).ConfigureAwait(false);
                return;
            }
        }

        await runtime.KillAsync(new RuncKillOptions { ContainerId = c.Id, Signal = 9 }, ct).ConfigureAwait(false);
        if (c.State == ContainerState.Created)
        {
            // Never started: runc's init is killed; conmon still records the exit.
            await runtime.DeleteAsync(new RuncDeleteOptions { ContainerId = c.Id }, ct).ConfigureAwait(false);
        }

        if (!await WaitExitAsync(c.Id, TimeSpan.FromSeconds(10), ct).ConfigureAwait(false))
        {
            // No exit file after SIGKILL: if the runtime no longer knows a live process, conmon died with it.
            var state = await runtime.StateAsync(new RuncStateOptions { ContainerId = c.Id }, ct).ConfigureAwait(false);
            if (state is null || state.Status == "stopped")
            {
                await MarkLostAsync(c, "the container stopped but its monitor recorded no exit code", ct).ConfigureAwait(false);
                return;
            }

            throw new CrestException(ErrorKind.DeadlineExceeded, $"container {c.Id} did not exit within 10 s of SIGKILL");
        }

        await GetAsync(c.Id, ct).ConfigureAwait(false);
        await DeleteStoppedAsync(runtime, c.Id).ConfigureAwait(false);
    }

    /// <summary>
    /// Once a stop has seen the exit, the runtime forgets the container (its cgroups and state) and its rootfs is
    /// unmounted at once, as containerd's shim deletes a task and unmounts its rootfs when it exits: RemoveContainer then
    /// has no runtime process to wait for and no mount to undo. Best effort: a failure is logged and the removal does it again.
    /// </summary>
    private async Task DeleteStoppedAsync(IOciRuntime runtime, string id)
    {
        await Step(id, () => runtime.DeleteAsync(new RuncDeleteOptions { ContainerId = id }, CancellationToken.None)).ConfigureAwait(false);
        await Step(id, () => { bundles.UnmountRootfs(bundles.For(id)); return Task.CompletedTask; }).ConfigureAwait(false);
    }

    /// <summary>Applies new CPU and memory limits to a created or running container, and records them.</summary>
    public async Task UpdateResourcesAsync(string idOrPrefix, ResourceSpec resources, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(resources);
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        // Under the lock and read again: the record written below must not bring back a container removed meanwhile.
        using var exclusive = await _locks.AcquireAsync(c.Id, ct).ConfigureAwait(false);
        c = await GetAsync(c.Id, ct).ConfigureAwait(false);
        if (c.State is not (ContainerState.Created or ContainerState.Running))
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {c.Id} is {c.State}; only a created or running container can be updated");
        }

        var limits = SpecBuilder.Limits(resources);
        if (c.AwaitsProcess)
        {
            // Not in the runtime yet: the limits go into config.json, which StartContainer hands to it.
            await UpdateBundleLimitsAsync(bundles.For(c.Id), limits, ct).ConfigureAwait(false);
        }
        else
        {
            await runtimes.For(c.RuntimeHandler).UpdateAsync(new RuncUpdateOptions { ContainerId = c.Id, Resources = limits }, ct).ConfigureAwait(false);
        }

        await store.PutContainerAsync(c with { Spec = c.Spec with { Resources = resources } }, ct).ConfigureAwait(false);
    }

    private static async Task UpdateBundleLimitsAsync(ContainerBundle bundle, SpecResources limits, CancellationToken ct)
    {
        var spec = await RuntimeSpecFile.ReadAsync(bundle.ConfigJson, ct).ConfigureAwait(false)
            ?? throw new CrestException(ErrorKind.Internal, $"{bundle.ConfigJson} holds no runtime spec");
        var resources = (spec.Linux.Resources ?? new SpecResources()) with { Memory = limits.Memory, Cpu = limits.Cpu };
        spec = spec with { Linux = spec.Linux with { Resources = resources } };
        await RuntimeSpecFile.WriteAsync(bundle.ConfigJson, spec, ct).ConfigureAwait(false);
    }

    /// <summary>Removes a container (stopping it first if needed), its rootfs mount, files and lease. Idempotent.</summary>
    public async Task RemoveAsync(string idOrPrefix, CancellationToken ct)
    {
        ContainerRecord c;
        try
        {
            c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        }
        catch (CrestException e) when (e.Kind == ErrorKind.NotFound)
        {
            return;
        }

        using var exclusive = await _locks.AcquireAsync(c.Id, ct).ConfigureAwait(false);
        c = await store.GetContainerAsync(c.Id, ct).ConfigureAwait(false) ?? c;
        if (c.State is ContainerState.Running or ContainerState.Created)
        {
            await StopLockedAsync(c.Id, TimeSpan.Zero, ct).ConfigureAwait(false);
        }

        if (lazyPages is not null)
        {
            // A post-copy restore removed before its memory arrived (a migration undone): its daemon goes too.
            await lazyPages.StopAsync(c.Id).ConfigureAwait(false);
            lazyPages.Forget(c.Id);
        }

        await TearDownAsync(c, ct).ConfigureAwait(false);
        await store.DeleteContainerAsync(c.Id, ct).ConfigureAwait(false);
        events.Publish(c.Id, c.SandboxId, LifecycleEvent.Deleted);
    }
}
