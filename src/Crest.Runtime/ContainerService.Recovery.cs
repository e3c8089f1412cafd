using Crest.Core;
using Crest.Linux;

namespace Crest.Runtime;

// crestd's start: the recorded containers meet what is really there.
public sealed partial class ContainerService
{
    /// <summary>
    /// On start: half-made containers (still Creating) are rolled back; the rest take their state from
    /// conmon's exit files, so running ones stay running and exited ones show their exit code. A container a crashed
    /// crestd left paused in the middle of a checkpoint is resumed, and that checkpoint's work directories removed; one
    /// a live migration holds frozen (<see cref="ContainerRecord.MigrationHold"/>) stays frozen.
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

                // No CRIU runs before serving: a CRIU run's configuration that a crestd dying mid-run left (a restore's
                // leave-stopped) would apply to the container's next checkpoint.
                if (File.Exists(bundles.For(c.Id).CriuConfig))
                {
                    File.Delete(bundles.For(c.Id).CriuConfig);
                }

                var runtimeState = c.State == ContainerState.Created && runtimes.TryFor(c.RuntimeHandler) is { } runtime
                    ? await runtime.StateAsync(new RuncStateOptions { ContainerId = c.Id }, ct).ConfigureAwait(false)
                    : null;
                if (runtimeState is { Status: "running" } running)
                {
                    // crestd died between runc start (or restore) and recording it: the process is adopted.
                    await store.PutContainerAsync(c with { State = ContainerState.Running, StartedAt = time.GetUtcNow(), Pid = running.Pid > 0 ? running.Pid : c.Pid, RestoreDir = null, RestoreStartedAt = null }, ct).ConfigureAwait(false);
                    if (c.RestoreStartedAt is not null)
                    {
                        RuntimeLog.InterruptedRestoreAdopted(logger, c.Id);
                    }

                    await DropRestoreDirectoryAsync(c).ConfigureAwait(false);
                }
                else if (c.AwaitsProcess && c.RestoreDir is null && runtimeState is { Status: "created", Pid: > 0 } made)
                {
                    // crestd died in StartContainer between runc create and recording it: the created process is
                    // adopted, and a StartContainer that comes again runs only runc start.
                    await store.PutContainerAsync(c with { Pid = made.Pid }, ct).ConfigureAwait(false);
                }
                else if (c.State == ContainerState.Created && c.RestoreStartedAt is { } begun)
                {
                    // crestd died while CRIU restored it and nothing runs: whatever the runtime kept of it goes, and the
                    // container says why. StartContainer refuses it from now on; a new CreateContainer restores again.
                    if (runtimes.TryFor(c.RuntimeHandler) is { } interrupted)
                    {
                        await Step(c.Id, () => interrupted.DeleteAsync(new RuncDeleteOptions { ContainerId = c.Id }, ct)).ConfigureAwait(false);
                    }

                    await store.PutContainerAsync(c with
                    {
                        State = ContainerState.Exited,
                        ExitCode = 128,
                        Reason = "StartError",
                        Message = $"the restore that began at {begun.UtcDateTime:O} did not complete: crestd stopped while CRIU was restoring this container; create it again from the checkpoint",
                        FinishedAt = time.GetUtcNow(),
                        RestoreDir = null,
                        RestoreStartedAt = null,
                    }, ct).ConfigureAwait(false);
                    RuntimeLog.InterruptedRestoreFailed(logger, c.Id);
                    await DropRestoreDirectoryAsync(c).ConfigureAwait(false);
                }
                else if (c.AwaitsProcess && !bundles.IsMounted(bundles.For(c.Id)))
                {
                    // Never started, and its rootfs is no longer mounted (the node rebooted): a start or restore into
                    // the bare directory must not happen.
                    await store.PutContainerAsync(c with { State = ContainerState.Exited, ExitCode = 128, Reason = "StartError", Message = $"the node restarted before this container was {(c.RestoreDir is null ? "started" : "restored")}; create it again", FinishedAt = time.GetUtcNow(), RestoreDir = null }, ct).ConfigureAwait(false);
                    await DropRestoreDirectoryAsync(c).ConfigureAwait(false);
                }

                var ownerState = c.State == ContainerState.Running && runtimes.TryFor(c.RuntimeHandler) is { } owner
                    ? await owner.StateAsync(new RuncStateOptions { ContainerId = c.Id }, ct).ConfigureAwait(false)
                    : null;
                if (c.State == ContainerState.Running && c.MigrationHold is { } hold)
                {
                    // A live migration's source: its copy may already run on the target, so only the migration (or an
                    // operator: crest resume, crest rm) may end the freeze. A post-copy page server's CRIU work stays
                    // too; a stop-copy freeze's held checkpoint goes, with its tmpfs: its record is swept at this start,
                    // so a later ReadArchive fails and the client undoes the migration.
                    // The runtime may call it running: a post-copy page server's CRIU holds the processes itself and
                    // gives the freezer back only when it ends.
                    if (hold.PageServerPid == 0)
                    {
                        RemoveCheckpointWork(bundles.For(c.Id));
                    }

                    RuntimeLog.MigrationHoldKept(logger, c.Id, hold.Since, ownerState?.Status ?? "unknown");
                    await RefreshAsync(c, ct).ConfigureAwait(false);
                    kept++;
                    continue;
                }

                if (ownerState is { Status: "paused" })
                {
                    // Crest pauses otherwise only while it checkpoints; a pause that outlived its crestd is undone.
                    await runtimes.For(c.RuntimeHandler).ResumeAsync(new RuncResumeOptions { ContainerId = c.Id }, ct).ConfigureAwait(false);
                    RuntimeLog.ResumedAfterRestart(logger, c.Id);
                }

                RemoveCheckpointWork(bundles.For(c.Id));
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

    /// <summary>Ends the name of a checkpoint archive being written, beside its location, until it is renamed into place.</summary>
    public const string PartialArchiveSuffix = ".crest-partial";

    /// <summary>Ends the name of the file beside a checkpoint's work directory that names its archive being written.</summary>
    public const string PartialArchiveRecordSuffix = ".archive";

    /// <summary>
    /// A restore that recovery ended (adopted, failed or left behind by a reboot) needs its restore directory no more;
    /// an archive's page images may still be mounted there, holding the archive.
    /// </summary>
    private Task DropRestoreDirectoryAsync(ContainerRecord c) => Step(c.Id, () =>
    {
        bundles.DeleteRestoreDirectory(bundles.For(c.Id).RestoreDir);
        return Task.CompletedTask;
    });

    /// <summary>
    /// The CRIU work directories of checkpoints a crashed crestd did not finish (they hold memory pages), and the
    /// temporary archives they were writing beside the checkpoint's location.
    /// </summary>
    private void RemoveCheckpointWork(ContainerBundle bundle)
    {
        if (!Directory.Exists(bundle.Dir))
        {
            return;
        }

        foreach (var record in Directory.EnumerateFiles(bundle.Dir, "checkpoint-work-*" + PartialArchiveRecordSuffix))
        {
            // The record is crestd's own (root's, under its root dir); only a regular file with the temporary suffix goes.
            var partial = File.ReadAllText(record).Trim();
            if (partial.EndsWith(PartialArchiveSuffix, StringComparison.Ordinal) && FileKinds.IsRegularFile(partial))
            {
                File.Delete(partial);
            }

            File.Delete(record);
        }

        foreach (var work in Directory.EnumerateDirectories(bundle.Dir, "checkpoint-work-*"))
        {
            // Its tmpfs, when the images went to memory, is unmounted first.
            RemoveCheckpointWork(work);
        }
    }
}
