using Crest.Core;

namespace Crest.Runtime;

// The runtime's part of CheckpointContainer: a CRIU dump taken while the container is frozen, and always a thaw.
public sealed partial class ContainerService
{
    /// <summary>A container's result of a CRIU dump taken while it was paused.</summary>
    public sealed record ContainerDump(ContainerRecord Container, SandboxRecord Sandbox, TimeSpan Paused, TimeSpan CriuDump, TimeSpan RootfsCapture)
    {
        /// <summary>A post-copy dump's CRIU, still serving the memory (null for a complete dump).</summary>
        public LazyCheckpoint? PageServer { get; init; }
    }

    /// <summary>
    /// Checkpoints a running container and leaves it running: pause (cgroup freezer), CRIU dump through the runtime
    /// (<c>checkpoint --leave-running</c>), <paramref name="captureRootfs"/> on the overlay upper directory while
    /// the processes are still frozen (so memory and files agree), then resume, whatever failed.
    /// Nothing else happens while the container is paused: the archive is built afterwards by the caller.
    /// With <paramref name="leaveFrozen"/> (a stop-and-copy migration's source) a dump that succeeded leaves the container
    /// paused, so nothing runs on past the checkpoint; the caller then thaws it (<see cref="ThawAsync"/>) or kills it
    /// (<see cref="KillFrozenAsync"/>). A failed dump is resumed either way. With <paramref name="lazyPageServer"/>
    /// (post-copy, always left frozen) CRIU writes everything but the memory and keeps serving that from a page server at
    /// that <c>HOST:PORT</c> (<see cref="ContainerDump.PageServer"/>); the cgroup freezer keeps the container frozen
    /// whatever CRIU does when its client goes (CRIU restores the freezer state it found). With
    /// <paramref name="pageServerTls"/> that page server speaks TLS (lines of the container's CRIU configuration file).
    /// </summary>
    public async Task<ContainerDump> DumpAsync(string idOrPrefix, string imagePath, string workPath, bool tcpEstablished,
        Func<ContainerRecord, string, CancellationToken, Task> captureRootfs, CancellationToken ct, bool leaveFrozen = false, string? lazyPageServer = null, PageTransferTls? pageServerTls = null)
    {
        leaveFrozen |= lazyPageServer is not null;
        ArgumentNullException.ThrowIfNull(captureRootfs);
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        using var exclusive = await _locks.AcquireAsync(c.Id, ct).ConfigureAwait(false);
        c = await GetAsync(c.Id, ct).ConfigureAwait(false);
        if (c.State != ContainerState.Running)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"container {c.Id} is in CONTAINER_{c.State.ToString().ToUpperInvariant()} state. only CONTAINER_RUNNING containers can be checkpointed");
        }

        RefuseHeld(c);
        var sandbox = await sandboxes.GetAsync(c.SandboxId, ct).ConfigureAwait(false);
        if (sandbox.Spec.Namespaces.HasPodUserNamespace)
        {
            // A restore refuses a checkpoint holding a user namespace, so no archive is made that none could restore.
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"container {c.Id} runs in pod sandbox {sandbox.Id}'s own user namespace (userns_options); checkpoints cover containers in the node's user namespace only");
        }

        var runtime = runtimes.For(c.RuntimeHandler);
        // Written before the pause, not inside the freeze window; removed when the dump is over.
        var criuConfig = CriuConfigFile.For(tcpEstablished) with { PageServerTls = lazyPageServer is null ? null : pageServerTls };
        using var criuConfigFile = await WriteCriuConfigAsync(c.Id, runtime, criuConfig, ct).ConfigureAwait(false);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        TimeSpan dumped = default, captured = default, paused;
        var succeeded = false;
        LazyCheckpoint? pageServer = null;
        try
        {
            // Inside the try and not cancellable: a pause that took effect is always undone below.
            await runtime.PauseAsync(new RuncPauseOptions { ContainerId = c.Id }, CancellationToken.None).ConfigureAwait(false);
            await FreezeOutsideVforkAsync(c, sandbox, runtime, ct).ConfigureAwait(false);
            var checkpoint = new RuncCheckpointOptions
            {
                ContainerId = c.Id,
                ImagePath = imagePath,
                WorkPath = workPath,
                TcpEstablished = tcpEstablished,
                LazyPageServer = lazyPageServer,
            };
            pageServer = await CriuDumpAsync(runtime, checkpoint, ct).ConfigureAwait(false);
            CrashPoints.Hit(CrashPoints.CheckpointFrozen);
            dumped = clock.Elapsed;
            await captureRootfs(c, bundles.For(c.Id).Upper, ct).ConfigureAwait(false);
            captured = clock.Elapsed - dumped;
            if (leaveFrozen)
            {
                // Recorded while still frozen and locked: from here on a crestd that restarts keeps it frozen
                // (RecoverAsync), since the target may already run its copy; a failure to record resumes it below.
                await HoldForMigrationAsync(c.Id, pageServer?.Pid ?? 0, ct).ConfigureAwait(false);
            }

            succeeded = true;
        }
        finally
        {
            // Never leave the container frozen, whatever failed or was cancelled (a migration keeps a good dump's freeze).
            if (!(leaveFrozen && succeeded))
            {
                if (pageServer is not null)
                {
                    // CRIU still holds the processes; it lets go when it dies.
                    await pageServer.KillAsync().ConfigureAwait(false);
                }

                await ResumeAfterDumpAsync(runtime, c.Id, succeeded).ConfigureAwait(false);
            }

            paused = clock.Elapsed;
        }

        return new ContainerDump(c, sandbox, paused, dumped, captured) { PageServer = pageServer };
    }

    /// <summary>
    /// CRIU's dump through the runtime: a complete one, or (<see cref="RuncCheckpointOptions.LazyPageServer"/>) one that
    /// leaves the memory out and returns the page server that serves it.
    /// </summary>
    private async Task<LazyCheckpoint?> CriuDumpAsync(IOciRuntime runtime, RuncCheckpointOptions options, CancellationToken ct)
    {
        if (options.LazyPageServer is null)
        {
            await runtime.CheckpointAsync(options, ct).ConfigureAwait(false);
            return null;
        }

        var pageServer = await runtime.StartLazyCheckpointAsync(options, ct).ConfigureAwait(false);
        if (pageServer.NagleKept is { } why)
        {
            RuntimeLog.PageServerNagleKept(logger, options.ContainerId, pageServer.PageServer, why);
        }

        return pageServer;
    }

    /// <summary>
    /// Resumes a dumped container. After a failed dump, one that runs already (a pause after a thaw for a task in vfork
    /// failed) keeps the dump's own error; one still frozen reports that it could not be resumed.
    /// </summary>
    private static async Task ResumeAfterDumpAsync(IOciRuntime runtime, string id, bool dumped)
    {
        try
        {
            await runtime.ResumeAsync(new RuncResumeOptions { ContainerId = id }, CancellationToken.None).ConfigureAwait(false);
        }
        catch (CrestException) when (!dumped)
        {
            var state = await runtime.StateAsync(new RuncStateOptions { ContainerId = id }, CancellationToken.None).ConfigureAwait(false);
            if (state?.Status == "paused")
            {
                throw;
            }
        }
    }

    /// <summary>
    /// A container a live migration holds frozen is not dumped again: a dump resumes what it paused when it fails, and
    /// that source must not run while its copy may run on the target.
    /// </summary>
    private static void RefuseHeld(ContainerRecord c)
    {
        if (c.MigrationHold is { } hold)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"container {c.Id} is frozen for a live migration since {hold.Since.UtcDateTime:O} and cannot be checkpointed until that ends (the migration ends it, or crest resume / crest rm)");
        }
    }

    /// <summary>One container of a pod checkpoint: where CRIU writes, and what is captured while the pod is frozen.</summary>
    public sealed record PodDumpTarget(string ContainerId, string ImagePath, string WorkPath, Func<ContainerRecord, string, CancellationToken, Task> CaptureRootfs)
    {
        /// <summary>
        /// A post-copy pod migration's source: CRIU writes everything but this container's memory and serves that from a
        /// page server at this <c>HOST:PORT</c> (<see cref="ContainerDump.PageServer"/>), as a container's post-copy freeze does.
        /// </summary>
        public string? LazyPageServer { get; init; }

        /// <summary>That page server speaks TLS (lines of the container's CRIU configuration file).</summary>
        public PageTransferTls? PageServerTls { get; init; }
    }

    /// <summary>What a pod dump did: each container's dump, and the pod's frozen window (first pause to last resume).</summary>
    public sealed record PodDump(IReadOnlyList<ContainerDump> Containers, TimeSpan Frozen, TimeSpan SharedCapture);

    /// <summary>
    /// Checkpoints several containers of one pod as one moment: every container is paused before any is dumped, each
    /// is dumped by CRIU (leave running) and its rootfs changes captured, then <paramref name="captureShared"/> saves
    /// what the pod's containers share while all are still frozen. Then every paused container is resumed, whatever
    /// failed or was cancelled, unless <paramref name="killAfterDump"/> and every dump succeeded: then each is killed
    /// while still frozen (SIGKILL is delivered at the thaw), so nothing runs on past the checkpoint. With
    /// <paramref name="holdFrozen"/> (a whole-pod migration's source) a good dump leaves every container frozen and held
    /// (<see cref="MigrationHold"/>), as a container migration's freeze does; each then ends by <see cref="ThawAsync"/>
    /// or <see cref="KillFrozenAsync"/>.
    /// </summary>
    public async Task<PodDump> DumpPodAsync(string sandboxId, IReadOnlyList<PodDumpTarget> targets, bool tcpEstablished,
        Func<CancellationToken, Task> captureShared, bool killAfterDump, CancellationToken ct, bool holdFrozen = false)
    {
        ArgumentNullException.ThrowIfNull(targets);
        ArgumentNullException.ThrowIfNull(captureShared);
        if (!holdFrozen && targets.Any(t => t.LazyPageServer is not null))
        {
            throw new ArgumentException("a pod dump that serves memory from page servers leaves its containers frozen (holdFrozen)", nameof(targets));
        }

        var sandbox = await sandboxes.GetAsync(sandboxId, ct).ConfigureAwait(false);
        // Locks in id order, so two pod checkpoints sharing containers never wait on each other crosswise.
        var held = new List<IDisposable>();
        var criuConfigs = new List<IDisposable>();
        try
        {
            foreach (var id in targets.Select(t => t.ContainerId).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal))
            {
                held.Add(await _locks.AcquireAsync(id, ct).ConfigureAwait(false));
            }

            var records = new List<ContainerRecord>();
            foreach (var t in targets)
            {
                var c = await GetAsync(t.ContainerId, ct).ConfigureAwait(false);
                if (c.SandboxId != sandbox.Id)
                {
                    throw new CrestException(ErrorKind.InvalidArgument, $"container {c.Id} belongs to pod sandbox {c.SandboxId}, not to {sandbox.Id}");
                }

                if (c.State != ContainerState.Running)
                {
                    throw new CrestException(ErrorKind.FailedPrecondition,
                        $"container {c.Id} ({c.Spec.Name}) of pod sandbox {sandbox.Id} is in CONTAINER_{c.State.ToString().ToUpperInvariant()} state; every container of a pod checkpoint must be running (name the running ones in container_ids)");
                }

                RefuseHeld(c);

                records.Add(c);
            }

            if (sandbox.Spec.Namespaces.HasPodUserNamespace)
            {
                throw new CrestException(ErrorKind.FailedPrecondition,
                    $"pod sandbox {sandbox.Id} has its own user namespace (userns_options); checkpoints cover pods in the node's user namespace only");
            }

            // Each container's CRIU configuration is written before the first pause, not inside the pod's frozen window.
            foreach (var (c, target) in records.Zip(targets))
            {
                var config = CriuConfigFile.For(tcpEstablished) with { PageServerTls = target.LazyPageServer is null ? null : target.PageServerTls };
                criuConfigs.Add(await WriteCriuConfigAsync(c.Id, runtimes.For(c.RuntimeHandler), config, ct).ConfigureAwait(false));
            }

            var clock = System.Diagnostics.Stopwatch.StartNew();
            var dumps = new List<ContainerDump>();
            var paused = new List<ContainerRecord>();
            var stillPaused = new List<string>();
            var servers = new List<LazyCheckpoint>();
            TimeSpan shared = default;
            var killed = false;
            var heldFrozen = false;
            try
            {
                foreach (var c in records)
                {
                    // Added before the call: a pause that took effect is undone even if the call reports an error.
                    paused.Add(c);
                    await runtimes.For(c.RuntimeHandler).PauseAsync(new RuncPauseOptions { ContainerId = c.Id }, CancellationToken.None).ConfigureAwait(false);
                }

                // Once all are paused: a container caught in vfork is thawed alone for a moment while the others stay frozen.
                foreach (var c in records)
                {
                    await FreezeOutsideVforkAsync(c, sandbox, runtimes.For(c.RuntimeHandler), ct).ConfigureAwait(false);
                }

                // The frozen window is the sum of what runs in it, so the containers are dumped side by side (one CRIU
                // per core) and the shared state is captured alongside; each CRIU works on its own container's images.
                var each = new ContainerDump?[records.Count];
                var dumping = Parallel.ForEachAsync(Enumerable.Range(0, records.Count),
                    new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, Environment.ProcessorCount), CancellationToken = ct },
                    async (i, innerCt) => each[i] = await DumpOneAsync(records[i], targets[i], sandbox, tcpEstablished, innerCt).ConfigureAwait(false));
                var sharing = CaptureTimedAsync(captureShared, ct);
                try
                {
                    await dumping.ConfigureAwait(false);
                }
                catch (Exception)
                {
                    // The capture never runs on past the resume; the dump's error is the one reported.
                    await sharing.ContinueWith(_ => { }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default).ConfigureAwait(false);
                    throw;
                }
                finally
                {
                    // Post-copy: the page servers of the dumps that succeeded, killed below if the pod is not held.
                    servers.AddRange(each.Select(d => d?.PageServer).OfType<LazyCheckpoint>());
                }

                shared = await sharing.ConfigureAwait(false);

                dumps.AddRange(each.Select(d => d!));
                if (killAfterDump)
                {
                    foreach (var c in records)
                    {
                        await runtimes.For(c.RuntimeHandler).KillAsync(new RuncKillOptions { ContainerId = c.Id, Signal = 9 }, CancellationToken.None).ConfigureAwait(false);
                    }

                    killed = true;
                }
                else if (holdFrozen)
                {
                    await HoldPodForMigrationAsync(dumps).ConfigureAwait(false);
                    heldFrozen = true;
                }

                CrashPoints.Hit(CrashPoints.PodCheckpointFrozen);
            }
            finally
            {
                // A page server's CRIU still holds its container's processes: it lets go when it dies.
                foreach (var server in heldFrozen ? [] : servers)
                {
                    await server.KillAsync().ConfigureAwait(false);
                }

                // Every container paused above is resumed (a killed one then dies), whatever failed or was cancelled;
                // one that cannot be resumed does not keep the others frozen. A held pod stays frozen.
                foreach (var c in heldFrozen ? [] : paused)
                {
                    try
                    {
                        await runtimes.For(c.RuntimeHandler).ResumeAsync(new RuncResumeOptions { ContainerId = c.Id }, CancellationToken.None).ConfigureAwait(false);
                    }
                    catch (CrestException e) when (!killed)
                    {
                        RuntimeLog.ResumeAfterPodDumpFailed(logger, c.Id, e.Message);
                        stillPaused.Add(c.Id);
                    }
                    catch (CrestException)
                    {
                        // Killed while frozen: the runtime may have thawed it to deliver SIGKILL ("container not paused").
                    }
                }
            }

            if (stillPaused.Count > 0)
            {
                throw new CrestException(ErrorKind.Internal,
                    $"pod sandbox {sandbox.Id} was checkpointed, but resuming containers {string.Join(", ", stillPaused)} failed; they may still be frozen (crestd's log has the runtime's error; `runc resume` them, or restart crestd, which resumes them)");
            }

            var frozen = clock.Elapsed;
            return new PodDump(dumps.Select(d => d with { Paused = frozen }).ToList(), frozen, shared);
        }
        finally
        {
            // The configuration files go while their containers are still locked, so none is removed under another dump.
            foreach (var h in criuConfigs.Concat(held))
            {
                h.Dispose();
            }
        }
    }

    /// <summary>One container of a pod dump: CRIU through the runtime, then its rootfs changes, while it is frozen.</summary>
    private async Task<ContainerDump> DumpOneAsync(ContainerRecord c, PodDumpTarget t, SandboxRecord sandbox, bool tcpEstablished, CancellationToken ct)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        LazyCheckpoint? pageServer = null;
        try
        {
            // Its CRIU configuration was written before the pod froze (DumpPodAsync).
            pageServer = await CriuDumpAsync(runtimes.For(c.RuntimeHandler), new RuncCheckpointOptions
            {
                ContainerId = c.Id,
                ImagePath = t.ImagePath,
                WorkPath = t.WorkPath,
                TcpEstablished = tcpEstablished,
                LazyPageServer = t.LazyPageServer,
            }, ct).ConfigureAwait(false);
        }
        catch (CrestException e) when (e.Kind != ErrorKind.FailedPrecondition && e.Kind != ErrorKind.DeadlineExceeded)
        {
            throw new CrestException(e.Kind, $"container {c.Id} ({c.Spec.Name}) could not be dumped: {e.Message}", e);
        }

        var dumped = clock.Elapsed;
        try
        {
            await t.CaptureRootfs(c, bundles.For(c.Id).Upper, ct).ConfigureAwait(false);
        }
        catch when (pageServer is not null)
        {
            // Not yet known to the pod dump, which kills the others' before it resumes them.
            await pageServer.KillAsync().ConfigureAwait(false);
            throw;
        }

        return new ContainerDump(c, sandbox, default, dumped, clock.Elapsed - dumped) { PageServer = pageServer };
    }

    private static async Task<TimeSpan> CaptureTimedAsync(Func<CancellationToken, Task> capture, CancellationToken ct)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        await capture(ct).ConfigureAwait(false);
        return clock.Elapsed;
    }
}
