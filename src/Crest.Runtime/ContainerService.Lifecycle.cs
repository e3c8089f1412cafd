using Crest.Core;
using Crest.Oci;

namespace Crest.Runtime;

// The state machine after create: CREATED -> RUNNING (start) -> EXITED (stop, or the process ends) -> gone (remove).
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

        try
        {
            // Not cancellable: once runc start runs, the record must say so.
            await runtime.StartAsync(new RuncStartOptions { ContainerId = c.Id }, CancellationToken.None).ConfigureAwait(false);
        }
        catch (CrestException e)
        {
            await store.PutContainerAsync(c with { State = ContainerState.Exited, ExitCode = 128, Reason = "StartError", Message = e.Message, FinishedAt = time.GetUtcNow() }, CancellationToken.None).ConfigureAwait(false);
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

        if (c.State == ContainerState.Created && c.RestoreDir is not null)
        {
            // Made from a checkpoint and never started: there is no process and no monitor to ask.
            await store.PutContainerAsync(c with { State = ContainerState.Exited, ExitCode = 0, Reason = "Completed", FinishedAt = time.GetUtcNow() }, ct).ConfigureAwait(false);
            events.Publish(c.Id, c.SandboxId, LifecycleEvent.Stopped);
            return;
        }

        var runtime = runtimes.For(c.RuntimeHandler);
        if (c.State == ContainerState.Running && timeout > TimeSpan.Zero)
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
    /// Once a stop has seen the exit, the runtime forgets the container (its cgroups and state) at once, as containerd's
    /// shim deletes a task when it exits: RemoveContainer then has no runtime process to wait for. Best effort: a failure
    /// is logged and the removal deletes it again.
    /// </summary>
    private Task DeleteStoppedAsync(IOciRuntime runtime, string id) =>
        Step(id, () => runtime.DeleteAsync(new RuncDeleteOptions { ContainerId = id }, CancellationToken.None));

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

        var spec = new SpecResources
        {
            Memory = resources.MemoryLimitBytes > 0 ? new SpecMemory(resources.MemoryLimitBytes) : null,
            Cpu = new SpecCpu
            {
                Shares = resources.CpuShares > 0 ? (ulong)resources.CpuShares : null,
                Quota = resources.CpuQuota != 0 ? resources.CpuQuota : null,
                Period = resources.CpuPeriod > 0 ? (ulong)resources.CpuPeriod : null,
                Cpus = resources.CpusetCpus.Length > 0 ? resources.CpusetCpus : null,
                Mems = resources.CpusetMems.Length > 0 ? resources.CpusetMems : null,
            },
        };
        await runtimes.For(c.RuntimeHandler).UpdateAsync(new RuncUpdateOptions { ContainerId = c.Id, Resources = spec }, ct).ConfigureAwait(false);
        await store.PutContainerAsync(c with { Spec = c.Spec with { Resources = resources } }, ct).ConfigureAwait(false);
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
