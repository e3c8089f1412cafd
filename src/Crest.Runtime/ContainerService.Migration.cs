using Crest.Core;

namespace Crest.Runtime;

// The source side of a stop-and-copy migration: a container left frozen by DumpAsync(leaveFrozen) is thawed when the
// migration fails, or killed while still frozen once its copy runs on the target, so exactly one copy ever runs.
public sealed partial class ContainerService
{
    /// <summary>
    /// Resumes a container that a migration left frozen. A container that is not paused (already thawed, or resumed by
    /// crestd's recovery after a restart) is left as it is: a failed migration calls this whatever happened before.
    /// </summary>
    public async Task ThawAsync(string idOrPrefix, CancellationToken ct)
    {
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        using var exclusive = await _locks.AcquireAsync(c.Id, ct).ConfigureAwait(false);
        c = await GetAsync(c.Id, ct).ConfigureAwait(false);
        var runtime = runtimes.For(c.RuntimeHandler);
        var state = await runtime.StateAsync(new RuncStateOptions { ContainerId = c.Id }, ct).ConfigureAwait(false);
        if (state?.Status != "paused")
        {
            return;
        }

        await runtime.ResumeAsync(new RuncResumeOptions { ContainerId = c.Id }, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Ends a frozen migration source: SIGKILL while it is still frozen, then the thaw that delivers it, so not one more
    /// instruction of it runs after the checkpoint. Its exit arrives through conmon as for any container.
    /// </summary>
    public async Task KillFrozenAsync(string idOrPrefix, CancellationToken ct)
    {
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        using var exclusive = await _locks.AcquireAsync(c.Id, ct).ConfigureAwait(false);
        c = await GetAsync(c.Id, ct).ConfigureAwait(false);
        if (c.State != ContainerState.Running)
        {
            return;
        }

        var runtime = runtimes.For(c.RuntimeHandler);
        await runtime.KillAsync(new RuncKillOptions { ContainerId = c.Id, Signal = 9 }, ct).ConfigureAwait(false);
        try
        {
            await runtime.ResumeAsync(new RuncResumeOptions { ContainerId = c.Id }, CancellationToken.None).ConfigureAwait(false);
        }
        catch (CrestException)
        {
            // The runtime may have thawed it to deliver SIGKILL ("container not paused").
        }

        await WaitExitAsync(c.Id, TimeSpan.FromSeconds(10), ct).ConfigureAwait(false);
    }
}
