using Crest.Core;
using Crest.Oci;

namespace Crest.Runtime;

// A freeze that CRIU can dump: no task of the container caught waiting in vfork.
public sealed partial class ContainerService
{
    /// <summary>How often a container is thawed and frozen again before a dump gives up on a task that keeps waiting in vfork.</summary>
    internal const int VforkRefreezes = 6;

    /// <summary>How long a thawed container is given, at the first try, for its vfork children to exec before it is frozen again; each later try waits as long again more.</summary>
    internal static readonly TimeSpan VforkSettle = TimeSpan.FromMilliseconds(50);

    /// <summary>
    /// Called with <paramref name="c"/> paused: while a task of it waits in vfork(2) (the freezer stopped its child
    /// between clone and exec; see <see cref="Crest.Linux.VforkWaits"/>), thaws the container until the child ran on, at
    /// most <see cref="VforkSettle"/> times the try, and pauses it again. CRIU cannot seize such a task: without this the
    /// dump would hold the freeze for CRIU's whole timeout (10 s by default) and then fail. Returns with the container
    /// paused, or throws with it paused after <see cref="VforkRefreezes"/> tries, or when <paramref name="ct"/> ends
    /// between tries (the caller resumes it). A thaw and its pause are not cancelled halfway.
    /// </summary>
    private async Task FreezeOutsideVforkAsync(ContainerRecord c, SandboxRecord sandbox, IOciRuntime runtime, CancellationToken ct)
    {
        var cgroup = SpecBuilder.CgroupsPathOf(sandbox, c.Id);
        for (var attempt = 1; ; attempt++)
        {
            ct.ThrowIfCancellationRequested();
            var waiting = linux.TasksInVfork(cgroup);
            if (waiting.Count == 0)
            {
                return;
            }

            if (attempt > VforkRefreezes)
            {
                throw new CrestException(ErrorKind.Unavailable,
                    $"container {c.Id}: task {string.Join(", ", waiting)} waited in vfork for a child that had not yet run its program at each of {attempt} freezes, "
                    + "and CRIU cannot checkpoint a task in that state; the container runs on: checkpoint it again (a child that never reaches exec keeps its parent there)");
            }

            RuntimeLog.FrozenInVfork(logger, c.Id, string.Join(", ", waiting), attempt);
            await runtime.ResumeAsync(new RuncResumeOptions { ContainerId = c.Id }, CancellationToken.None).ConfigureAwait(false);
            var thawed = time.GetTimestamp();
            while (time.GetElapsedTime(thawed) < VforkSettle * attempt && linux.TasksInVfork(cgroup).Count > 0)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(1), time, CancellationToken.None).ConfigureAwait(false);
            }

            await runtime.PauseAsync(new RuncPauseOptions { ContainerId = c.Id }, CancellationToken.None).ConfigureAwait(false);
        }
    }
}
