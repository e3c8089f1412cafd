using Crest.Core;

namespace Crest.Runtime;

// StartContainer for a container made from a checkpoint (CreateContainer kept the checkpoint in the bundle).
public sealed partial class ContainerService
{
    /// <summary>
    /// StartContainer for a container made from a checkpoint (the second half of executing the restore plan): the
    /// rootfs diff and deletions are applied to the new rootfs, missing bind-mount sources are recreated, and the
    /// runtime restores the processes (conmon running <c>runtime restore</c> with the plan's CRIU options) into the
    /// new pod's namespaces and cgroup. A failure leaves the container EXITED (128, StartError) with the lines of
    /// CRIU's restore.log that say why, and nothing running or registered with the runtime.
    /// </summary>
    private async Task RestoreLockedAsync(ContainerRecord c, IOciRuntime runtime, CancellationToken ct)
    {
        var sandbox = await sandboxes.GetAsync(c.SandboxId, ct).ConfigureAwait(false);
        if (sandbox.State != SandboxState.Ready)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"pod sandbox {sandbox.Id} is {sandbox.State}, not ready; container {c.Id} cannot be restored into it");
        }

        var bundle = bundles.For(c.Id);
        // The record's restore directory is the bundle's (CreateAsync moved the checkpoint there).
        var restoreDir = c.RestoreDir!;
        var started = time.GetUtcNow();
        var lazy = false;
        // Signalled once the runtime's restore returned: killing processes CRIU is still restoring hangs the restore.
        var restoreReturned = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        IDisposable? criuConfig = null;
        try
        {
            if (!File.Exists(Path.Combine(bundle.RestoreImages, "inventory.img")))
            {
                throw new CrestException(ErrorKind.FailedPrecondition, $"container {c.Id}: a complete checkpoint cannot be found (checkpoint/inventory.img is missing)");
            }

            await bundles.ApplyCheckpointAsync(bundle, c, ct).ConfigureAwait(false);
            var options = new RuncRestoreOptions
            {
                Monitor = ConmonCreateOptions.ForContainer(c, sandbox, bundle),
                ImagePath = bundle.RestoreImages,
                // A record made by a crestd whose plans carried no CRIU options: the defaults (file locks), as its
                // [restore] tcp_established is not known here.
                Criu = c.RestoreCriu ?? new CriuRestoreOptions(),
            };
            // Recorded first, so that a crestd that dies while CRIU runs finds out at its restart (RecoverAsync).
            c = c with { RestoreStartedAt = time.GetUtcNow() };
            await store.PutContainerAsync(c, CancellationToken.None).ConfigureAwait(false);
            CrashPoints.Hit(CrashPoints.ContainerRestoreBegun);
            // Named by the container's org.criu.config (CreateAsync); removed in finally, so later checkpoints neither
            // leave it stopped nor skip a network lock they need.
            criuConfig = await WriteCriuConfigAsync(c.Id, runtime, CriuConfigFile.For(options.Criu.TcpEstablished, options.Criu.LeaveStopped), ct).ConfigureAwait(false);

            if (options.Criu.LazyPagesFrom is { } pageServer)
            {
                await StartLazyPagesAsync(c, runtime, bundle, pageServer, restoreDir, restoreReturned.Task, ct).ConfigureAwait(false);
                lazy = true;
            }

            // Not cancellable: once the runtime restores, the record must say so.
            var pid = await runtime.RestoreAsync(options, CancellationToken.None).ConfigureAwait(false);
            CrashPoints.Hit(CrashPoints.ContainerRestoreUnrecorded);
            var running = c with { State = ContainerState.Running, Pid = pid, StartedAt = time.GetUtcNow(), RestoreDir = null, RestoreStartedAt = null };
            await store.PutContainerAsync(running, CancellationToken.None).ConfigureAwait(false);
            RuntimeLog.ContainerRestored(logger, c.Id, pid, (long)(time.GetUtcNow() - started).TotalMilliseconds);
            events.Publish(c.Id, c.SandboxId, LifecycleEvent.Started);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Whatever went wrong (the archive's data is untrusted), the container ends EXITED and can be removed.
            var why = e.Message + CriuLogExcerpt(bundle.RestoreLog);
            // The restore is over: the lazy-pages watchdog waits for that before it acts, and StopAsync waits for the watchdog.
            restoreReturned.TrySetResult();
            if (lazy && lazyPages is not null)
            {
                await lazyPages.StopAsync(c.Id).ConfigureAwait(false);
                // Why the daemon could not serve (its page source unreachable, for one) is in its own log.
                why += CriuLogExcerpt(Path.Combine(bundle.BundleDir, CriuLazyPagesOptions.LazyPagesLog));
            }

            await Step(c.Id, () => runtime.DeleteAsync(new RuncDeleteOptions { ContainerId = c.Id }, CancellationToken.None)).ConfigureAwait(false);
            await store.PutContainerAsync(c with { State = ContainerState.Exited, ExitCode = 128, Reason = "StartError", Message = why, FinishedAt = time.GetUtcNow(), RestoreDir = null, RestoreStartedAt = null },
                CancellationToken.None).ConfigureAwait(false);
            events.Publish(c.Id, c.SandboxId, LifecycleEvent.Stopped);
            throw new CrestException(e is CrestException ce ? ce.Kind : ErrorKind.Internal, $"container {c.Id} could not be restored: {why}", e);
        }
        finally
        {
            restoreReturned.TrySetResult();
            await Step(c.Id, () =>
            {
                criuConfig?.Dispose();
                return Task.CompletedTask;
            }).ConfigureAwait(false);
            // A post-copy restore's images stay until its lazy-pages daemon ends (it removes them then).
            await Step(c.Id, () =>
            {
                if (!lazy)
                {
                    bundles.DeleteRestoreDirectory(restoreDir);
                }

                return Task.CompletedTask;
            }).ConfigureAwait(false);
            await Step(c.Id, () => bundles.RestoreFinishedAsync(c, sandbox, CancellationToken.None)).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Post-copy: starts the container's <c>criu lazy-pages</c> before the restore connects to it, with the watchdog that
    /// kills the restored container if the daemon ends before every page arrived.
    /// </summary>
    private async Task StartLazyPagesAsync(ContainerRecord c, IOciRuntime runtime, ContainerBundle bundle, string pageServer, string restoreDir, Task restoreReturned, CancellationToken ct)
    {
        if (lazyPages is null)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {c.Id} is a post-copy restore, but this node has no lazy-pages support configured");
        }

        var colon = pageServer.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(pageServer.AsSpan(colon + 1), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var port) || port is 0 or > 65535)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"container {c.Id}: the post-copy page server \"{pageServer}\" is not HOST:PORT");
        }

        // Over TLS: this node's key pair, prepared for this migration, and the source's certificate pinned as the only CA.
        var identity = c.RestoreCriu?.LazyPagesIdentity;
        try
        {
            PageTransferTls? tls = null;
            if (identity is not null)
            {
                var identities = lazyPages.Identities
                    ?? throw new CrestException(ErrorKind.FailedPrecondition, $"container {c.Id} is a post-copy restore over TLS, but this node keeps no page transfer identities");
                tls = identities.Pin(identity, c.RestoreCriu!.LazyPagesServerCertificate!);
            }

            await StartLazyPagesDaemonAsync(c, runtime, bundle, pageServer[..colon].Trim('[', ']'), port, tls, identity, restoreDir, restoreReturned, ct).ConfigureAwait(false);
        }
        catch
        {
            // No daemon, so no watchdog to end the identity (PreparePageClient made it for this restore alone).
            if (identity is not null)
            {
                lazyPages.Identities?.Remove(identity);
            }

            throw;
        }
    }

    private async Task StartLazyPagesDaemonAsync(ContainerRecord c, IOciRuntime runtime, ContainerBundle bundle, string address, int port, PageTransferTls? tls, string? identity,
        string restoreDir, Task restoreReturned, CancellationToken ct)
    {
        await lazyPages!.StartAsync(c.Id,
            new CriuLazyPagesOptions { ImagePath = bundle.RestoreImages, WorkPath = bundle.BundleDir, Address = address, Port = port, Tls = tls },
            onFailure: async _ =>
            {
                // A daemon lost during the restore fails the restore itself (CRIU cannot hand it the userfaultfd).
                await restoreReturned.ConfigureAwait(false);
                await runtime.KillAsync(new RuncKillOptions { ContainerId = c.Id, Signal = 9 }, CancellationToken.None).ConfigureAwait(false);
            },
            onEnd: () =>
            {
                // The key pair served this one connection: it goes with the transfer, whichever way it ended.
                if (identity is not null)
                {
                    lazyPages.Identities?.Remove(identity);
                }

                bundles.DeleteRestoreDirectory(restoreDir);
                return Task.CompletedTask;
            }, ct).ConfigureAwait(false);
    }

    /// <summary>A post-copy restored container's transfer, or null when it has none.</summary>
    public async Task<LazyPagesState?> LazyPagesStateAsync(string idOrPrefix, bool wait, CancellationToken ct)
    {
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        return lazyPages is null ? null : await lazyPages.StateAsync(c.Id, wait, ct).ConfigureAwait(false);
    }

    /// <summary>The error lines of a CRIU log (dump.log, restore.log), or its last lines, for an error message.</summary>
    public static string CriuLogExcerpt(string path)
    {
        if (!File.Exists(path))
        {
            return "";
        }

        var lines = File.ReadLines(path).ToList();
        var errors = lines.Where(l => l.Contains("Error", StringComparison.Ordinal) || l.Contains("error", StringComparison.Ordinal)).TakeLast(8).ToList();
        var excerpt = errors.Count > 0 ? errors : lines.TakeLast(5).ToList();
        return excerpt.Count == 0 ? "" : $"; CRIU {Path.GetFileName(path)} ({path}):\n" + string.Join('\n', excerpt.Select(l => "  " + l.Trim()));
    }
}
