using Crest.Core;
using Crest.Linux;

namespace Crest.Runtime;

// The source side of a live migration: a container left frozen by DumpAsync(leaveFrozen) is thawed when the migration
// fails, or killed while still frozen once its copy runs on the target, so exactly one copy ever runs. While frozen it
// carries a MigrationHold in its record, so a crestd that restarts meanwhile keeps it frozen (RecoverAsync).
public sealed partial class ContainerService
{
    /// <summary>How long a page server a crashed crestd left behind is given to die after SIGKILL.</summary>
    private static readonly TimeSpan LeftoverPageServerExit = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Resumes a container that a migration left frozen, and ends its hold. A container that is not paused (already
    /// thawed, or never frozen) is left running as it is: a failed migration calls this whatever happened before. A
    /// post-copy page server that a crashed crestd left serving is killed first: its CRIU holds the processes.
    /// </summary>
    public async Task ThawAsync(string idOrPrefix, CancellationToken ct)
    {
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        using var exclusive = await _locks.AcquireAsync(c.Id, ct).ConfigureAwait(false);
        c = await GetAsync(c.Id, ct).ConfigureAwait(false);
        await EndLeftoverPageServerAsync(c, ct).ConfigureAwait(false);
        var runtime = runtimes.For(c.RuntimeHandler);
        var state = await runtime.StateAsync(new RuncStateOptions { ContainerId = c.Id }, ct).ConfigureAwait(false);
        if (state?.Status == "paused")
        {
            await runtime.ResumeAsync(new RuncResumeOptions { ContainerId = c.Id }, ct).ConfigureAwait(false);
        }

        // After the thaw: a crestd that dies in between keeps the hold, and the Resume the client repeats drops it.
        await EndHoldAsync(c.Id, "resumed", CancellationToken.None).ConfigureAwait(false);
    }

    /// <summary>
    /// Ends a frozen migration source: SIGKILL while it is still frozen, then the thaw that delivers it, so not one more
    /// instruction of it runs after the checkpoint. Its exit arrives through conmon as for any container, and ends its hold.
    /// <paramref name="endPageServer"/> (post-copy: the caller's page server) runs once the container is frozen again,
    /// before the kill.
    /// </summary>
    public async Task KillFrozenAsync(string idOrPrefix, CancellationToken ct, Func<Task>? endPageServer = null)
    {
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        using var exclusive = await _locks.AcquireAsync(c.Id, ct).ConfigureAwait(false);
        c = await GetAsync(c.Id, ct).ConfigureAwait(false);
        if (c.State != ContainerState.Running)
        {
            return;
        }

        await KillWhileFrozenAsync(c, ct, endPageServer).ConfigureAwait(false);
        await WaitExitAsync(c.Id, TimeSpan.FromSeconds(10), ct).ConfigureAwait(false);
        await EndHoldAsync(c.Id, "killed", CancellationToken.None).ConfigureAwait(false);
    }

    /// <summary>SIGKILL to a frozen container, then the thaw (cgroup v1 delivers the signal only then); the caller waits for the exit.</summary>
    private async Task KillWhileFrozenAsync(ContainerRecord c, CancellationToken ct, Func<Task>? endPageServer = null)
    {
        var runtime = runtimes.For(c.RuntimeHandler);
        if (await runtime.StateAsync(new RuncStateOptions { ContainerId = c.Id }, ct).ConfigureAwait(false) is { Status: "running" })
        {
            // A post-copy page server's CRIU holds the processes itself and has let the freezer go until it ends: frozen
            // again first, so that killing that CRIU (below) lets nothing run.
            await runtime.PauseAsync(new RuncPauseOptions { ContainerId = c.Id }, ct).ConfigureAwait(false);
        }

        if (endPageServer is not null)
        {
            await endPageServer().ConfigureAwait(false);
        }

        await EndLeftoverPageServerAsync(c, ct).ConfigureAwait(false);
        await runtime.KillAsync(new RuncKillOptions { ContainerId = c.Id, Signal = 9 }, ct).ConfigureAwait(false);
        try
        {
            await runtime.ResumeAsync(new RuncResumeOptions { ContainerId = c.Id }, CancellationToken.None).ConfigureAwait(false);
        }
        catch (CrestException)
        {
            // The runtime may have thawed it to deliver SIGKILL ("container not paused").
        }
    }

    /// <summary>Records that a migration keeps the container frozen (DumpAsync, under the container's lock).</summary>
    private async Task HoldForMigrationAsync(string id, int pageServerPid, CancellationToken ct)
    {
        var c = await store.GetContainerAsync(id, ct).ConfigureAwait(false)
            ?? throw new CrestException(ErrorKind.NotFound, $"container {id} was removed while it was being frozen for a migration");
        var hold = new MigrationHold(time.GetUtcNow()) { PageServerPid = pageServerPid };
        await store.PutContainerAsync(c with { MigrationHold = hold }, ct).ConfigureAwait(false);
        RuntimeLog.MigrationHoldRecorded(logger, id, hold.Since);
    }

    /// <summary>
    /// Records a migration hold on every container of a frozen pod dump (DumpPodAsync, under their locks); if one cannot be
    /// recorded, the holds recorded so far end and the caller resumes them all. A post-copy dump's hold names its page
    /// server, which a restarted crestd kills (as a container's).
    /// </summary>
    private async Task HoldPodForMigrationAsync(IReadOnlyList<ContainerDump> dumps)
    {
        var recorded = new List<string>();
        try
        {
            foreach (var d in dumps)
            {
                await HoldForMigrationAsync(d.Container.Id, d.PageServer?.Pid ?? 0, CancellationToken.None).ConfigureAwait(false);
                recorded.Add(d.Container.Id);
            }
        }
        catch
        {
            foreach (var id in recorded)
            {
                await EndHoldAsync(id, "resumed", CancellationToken.None).ConfigureAwait(false);
            }

            throw;
        }
    }

    /// <summary>Drops a container's migration hold, if it has one (the record is read again: an exit may have been recorded meanwhile).</summary>
    private async Task EndHoldAsync(string id, string how, CancellationToken ct)
    {
        if (await store.GetContainerAsync(id, ct).ConfigureAwait(false) is { MigrationHold: { } hold } c)
        {
            await store.PutContainerAsync(c with { MigrationHold = null }, ct).ConfigureAwait(false);
            RuntimeLog.MigrationHoldEnded(logger, id, hold.Since, how);
        }
    }

    /// <summary>
    /// A post-copy source's page server that an earlier crestd started and that still runs (it leads a session of its own,
    /// so it outlived that crestd): SIGKILL to its process group, then a bounded wait for it to go. CRIU holds the frozen
    /// processes while it serves, so neither a thaw nor a kill may come before it is gone.
    /// </summary>
    private async Task EndLeftoverPageServerAsync(ContainerRecord c, CancellationToken ct)
    {
        if (c.MigrationHold is not { PageServerPid: > 0 and var pid } || !linux.IsAlive(pid) || !LazyCheckpoint.IsPageServerOf(pid, c.Id))
        {
            return;
        }

        RuntimeLog.LeftoverPageServerKilled(logger, c.Id, pid);
        _ = ChildProcess.SignalGroup(pid, 9);
        var waited = time.GetTimestamp();
        while (linux.IsAlive(pid))
        {
            if (time.GetElapsedTime(waited) > LeftoverPageServerExit)
            {
                throw new CrestException(ErrorKind.Internal,
                    $"container {c.Id}: the post-copy page server (pid {pid}) an earlier crestd left did not exit within {LeftoverPageServerExit.TotalSeconds:0} s of SIGKILL; the container stays frozen, try again");
            }

            await Task.Delay(TimeSpan.FromMilliseconds(20), time, ct).ConfigureAwait(false);
        }
    }
}
