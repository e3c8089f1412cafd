using Crest.Core;

namespace Crest.Runtime;

// crestd's start: the recorded containers meet what is really there.
public sealed partial class ContainerService
{
    /// <summary>
    /// On start: half-made containers (still Creating) are rolled back; the rest take their state from
    /// conmon's exit files, so running ones stay running and exited ones show their exit code.
    /// </summary>
    public async Task<(int Kept, int RolledBack)> RecoverAsync(CancellationToken ct)
    {
        var kept = 0;
        var rolledBack = 0;
        foreach (var c in await store.ListContainersAsync(ct).ConfigureAwait(false))
        {
            try
            {
                if (c.State == ContainerState.Creating)
                {
                    await TearDownAsync(c, ct).ConfigureAwait(false);
                    await store.DeleteContainerAsync(c.Id, ct).ConfigureAwait(false);
                    rolledBack++;
                    continue;
                }

                if (c.State == ContainerState.Created && runtimes.TryFor(c.RuntimeHandler) is { } runtime
                    && await runtime.StateAsync(new RuncStateOptions { ContainerId = c.Id }, ct).ConfigureAwait(false) is { Status: "running" } running)
                {
                    // crestd died between runc start (or restore) and recording it.
                    await store.PutContainerAsync(c with { State = ContainerState.Running, StartedAt = time.GetUtcNow(), Pid = running.Pid > 0 ? running.Pid : c.Pid, RestoreDir = null }, ct).ConfigureAwait(false);
                }
                else if (c.State == ContainerState.Created && c.RestoreDir is not null && !bundles.IsMounted(bundles.For(c.Id)))
                {
                    // Made from a checkpoint, never started, and its rootfs is no longer mounted (the node rebooted):
                    // a restore into the bare directory must not happen.
                    await store.PutContainerAsync(c with { State = ContainerState.Exited, ExitCode = 128, Reason = "StartError", Message = "the node restarted before this container was restored; create it again", FinishedAt = time.GetUtcNow(), RestoreDir = null }, ct).ConfigureAwait(false);
                }

                await RefreshAsync(c, ct).ConfigureAwait(false);
                kept++;
            }
            catch (Exception e) when (e is CrestException or IOException or UnauthorizedAccessException)
            {
                // One broken record must not keep crestd from starting.
                RuntimeLog.CleanupFailed(logger, c.Id, e.Message);
            }
        }

        return (kept, rolledBack);
    }
}
