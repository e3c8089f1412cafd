using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using Crest.Core;
using Crest.Images;
using Crest.Linux;
using Crest.Oci;
using Microsoft.Extensions.Logging;

namespace Crest.Runtime;

/// <summary>
/// Containers: a rootfs that is one overlay mount over the image's snapshot chain (the snapshot leased for
/// the container's life), config.json from the CRI config and the image, created by conmon + runc/crun at
/// CreateContainer and started at StartContainer. State comes from conmon's exit files, so it survives crestd.
/// </summary>
public sealed partial class ContainerService(
    IRuntimeStore store,
    SandboxService sandboxes,
    ImageService images,
    IImageMetadataStore imageMetadata,
    ILinux linux,
    IOciRuntime oci,
    ICommandRunner commands,
    RuntimeLayout layout,
    RuntimeEvents events,
    IRestoreSteps restoreSteps,
    TimeProvider time,
    ILogger<ContainerService> logger)
{
    private readonly KeyedLock _locks = new();
    private readonly Lazy<IReadOnlyList<string>> _nodeCapabilities = new(() => SpecBuilder.CapabilityNames(linux.HeldCapabilities()));

    public async Task<ContainerRecord> CreateAsync(string sandboxId, ContainerSpec spec, CancellationToken ct) =>
        await CreateAsync(sandboxId, spec, restore: null, ct).ConfigureAwait(false);

    /// <summary>
    /// A volume asking for mounts from the host (host_to_container) needs a host path on a shared or slave mount, one
    /// sending them back (bidirectional) a shared one: otherwise nothing would propagate, silently. As containerd does,
    /// the create is refused, naming the mount to make shared.
    /// </summary>
    private void CheckVolumePropagation(ContainerSpec spec)
    {
        foreach (var m in spec.Mounts.Where(m => m.Propagation is not ("private" or "rprivate")))
        {
            var bidirectional = m.Propagation is "rshared" or "bidirectional";
            var (mountPoint, propagation) = linux.PropagationOf(m.HostPath);
            if (propagation == MountPropagation.Private || (bidirectional && propagation != MountPropagation.Shared))
            {
                throw new CrestException(ErrorKind.FailedPrecondition,
                    $"container {spec.Name}: volume {m.HostPath} asks for {(bidirectional ? "bidirectional" : "host-to-container")} mount propagation, "
                    + $"but it lies on mount {mountPoint}, which is {propagation.ToString().ToLowerInvariant()}; make that mount {(bidirectional ? "shared" : "shared or slave")} "
                    + $"(mount --make-rshared {mountPoint}) or ask for private propagation");
            }
        }
    }

    /// <summary>
    /// Creates a container; with <paramref name="restore"/> it is made from a checkpoint: the prepared checkpoint
    /// directory moves into the container's private restore directory, the old log is put in place, and no
    /// process is created until StartContainer restores it.
    /// </summary>
    public async Task<ContainerRecord> CreateAsync(string sandboxId, ContainerSpec spec, ContainerRestore? restore, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var sandbox = await sandboxes.GetAsync(sandboxId, ct).ConfigureAwait(false);
        if (sandbox.State != SandboxState.Ready)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"pod sandbox {sandbox.Id} is {sandbox.State}, not ready; containers are created only in a ready pod");
        }

        CheckUserNamespace(spec, sandbox);
        var details = await images.InspectAsync(spec.Image, ct).ConfigureAwait(false)
            ?? throw new CrestException(ErrorKind.NotFound, $"image {spec.Image} is not present on this node; pull it first (CreateContainer does not pull)");
        var handler = sandboxes.Handler(sandbox.RuntimeHandler);
        var id = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
        var logFile = LogFile(sandbox.Spec.LogDirectory, spec.LogPath, spec.Name);
        var targetPid = 0;
        if (spec.Security.Namespaces.Pid == NamespaceMode.Target)
        {
            var target = await GetAsync(spec.Security.Namespaces.TargetId ?? "", ct).ConfigureAwait(false);
            targetPid = target.State == ContainerState.Running ? target.Pid
                : throw new CrestException(ErrorKind.FailedPrecondition, $"container {spec.Name} wants the pid namespace of {target.Id}, which is {target.State}, not running");
        }

        CheckVolumePropagation(spec);
        var record = new ContainerRecord
        {
            Id = id,
            SandboxId = sandbox.Id,
            Spec = spec,
            State = ContainerState.Creating,
            CreatedAt = time.GetUtcNow(),
            ImageId = details.Image.Id.ToString(),
            ImageRef = details.Image.RepoDigests.Count > 0 ? details.Image.RepoDigests[0] : details.Image.Id.ToString(),
            SnapshotKey = details.Image.ChainId,
            RuntimeHandler = handler.Name,
            LogFile = logFile,
            StopSignal = Signal(details.Config.Config?.StopSignal),
        };
        // The name check and the Creating record are one step, so two creates cannot both take a name.
        using (await _locks.AcquireAsync("names:" + sandbox.Id, ct).ConfigureAwait(false))
        {
            var all = await store.ListContainersAsync(ct).ConfigureAwait(false);
            if (all.FirstOrDefault(c => c.SandboxId == sandbox.Id && c.Spec.Name == spec.Name && c.Spec.Attempt == spec.Attempt) is { } clash)
            {
                throw new CrestException(ErrorKind.AlreadyExists, $"container name {spec.Name} (attempt {spec.Attempt}) is already used by {clash.Id} in pod sandbox {sandbox.Id}");
            }

            await store.PutContainerAsync(record, ct).ConfigureAwait(false);
        }

        try
        {
            // The lease is taken again under the GC lock: the image may have been removed since the lookup above.
            details = await images.LeaseAsync(id, spec.Image, ct).ConfigureAwait(false);

            var dir = layout.ContainerDir(id);
            var rootfs = Path.Combine(dir, "rootfs");
            Directory.CreateDirectory(Path.Combine(dir, "upper"));
            Directory.CreateDirectory(Path.Combine(dir, "work"));
            Directory.CreateDirectory(rootfs);
            var lower = details.Image.ChainId is { } c ? await images.Snapshots.LowerDirsAsync(c, ct).ConfigureAwait(false) : [];
            if (lower.Count == 0)
            {
                Directory.CreateDirectory(Path.Combine(dir, "empty"));
                lower = [Path.Combine(dir, "empty")];
            }

            try
            {
                if (sandbox.Spec.Namespaces.HasPodUserNamespace)
                {
                    lower = IdMapLayers(dir, lower, sandbox);
                }

                linux.Mount("overlay", rootfs, "overlay", MountOptions.None,
                    $"lowerdir={string.Join(':', lower)},upperdir={Path.Combine(dir, "upper")},workdir={Path.Combine(dir, "work")}");
            }
            finally
            {
                // The overlay holds its own references to its layers: the id-mapped binds are needed only to build it.
                UnmountIdMapped(dir);
            }

            var user = ContainerUser.Resolve(spec.Security, details.Config.Config?.User, rootfs, spec.Name);
            record = record with { User = user };
            SpecSeccomp? localhostSeccomp = null;
            if (spec.Security.Seccomp == SeccompMode.Localhost)
            {
                var path = spec.Security.SeccompLocalhostPath ?? "";
                localhostSeccomp = File.Exists(path)
                    ? JsonSerializer.Deserialize(await File.ReadAllBytesAsync(path, ct).ConfigureAwait(false), RuntimeSpecJson.Default.SpecSeccomp)
                    : throw new CrestException(ErrorKind.InvalidArgument, $"seccomp profile {path} (Localhost) does not exist on this node");
            }

            var sandboxDir = sandboxes.SandboxDir(sandbox.Id);
            var runtimeSpec = SpecBuilder.ForContainer(spec, new ContainerContext
            {
                ContainerId = id,
                Sandbox = sandbox,
                RootfsPath = rootfs,
                Image = details.Config.Config,
                User = user,
                HostsFile = Path.Combine(sandboxDir, "hosts"),
                HostnameFile = Path.Combine(sandboxDir, "hostname"),
                ResolvConfFile = Path.Combine(sandboxDir, "resolv.conf"),
                ShmPath = Path.Combine(sandboxDir, "shm"),
                LocalhostSeccomp = localhostSeccomp,
                Devices = spec.Devices.Select(DeviceOf).ToList(),
                TargetPid = targetPid,
                NodeCapabilities = _nodeCapabilities.Value,
            });
            var bundle = Path.Combine(dir, "bundle");
            Directory.CreateDirectory(bundle);
            await File.WriteAllBytesAsync(Path.Combine(bundle, "config.json"), JsonSerializer.SerializeToUtf8Bytes(runtimeSpec, RuntimeSpecJson.Default.RuntimeSpec), ct).ConfigureAwait(false);
            if (logFile.Length > 0)
            {
                Directory.CreateDirectory(Path.GetDirectoryName(logFile)!);
            }

            var state = layout.ContainerStateDir(id);
            Directory.CreateDirectory(state);
            if (restore is not null)
            {
                var restoreDir = RestoreDir(id);
                Directory.Move(restore.StagingDir, restoreDir);
                File.SetUnixFileMode(restoreDir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
                if (logFile.Length > 0 && restore.LogCopy is { } logCopy)
                {
                    await CopyLogAsync(Path.Combine(restoreDir, logCopy), logFile, ct).ConfigureAwait(false);
                }

                record = record with { State = ContainerState.Created, RestoreDir = restoreDir, Restored = true };
                await store.PutContainerAsync(record, CancellationToken.None).ConfigureAwait(false);
                RuntimeLog.ContainerCreated(logger, id, sandbox.Id);
                events.Publish(id, sandbox.Id, LifecycleEvent.Created);
                return record;
            }

            var pid = await oci.CreateAsync(ConmonOptions(record, sandbox, handler), ct).ConfigureAwait(false);
            record = record with { State = ContainerState.Created, Pid = pid };
            await store.PutContainerAsync(record, CancellationToken.None).ConfigureAwait(false);
            RuntimeLog.ContainerCreated(logger, id, sandbox.Id);
            events.Publish(id, sandbox.Id, LifecycleEvent.Created);
            return record;
        }
        catch
        {
            await TearDownAsync(record, CancellationToken.None).ConfigureAwait(false);
            await store.DeleteContainerAsync(id, CancellationToken.None).ConfigureAwait(false);
            throw;
        }
    }

    public async Task StartAsync(string idOrPrefix, CancellationToken ct)
    {
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        using var exclusive = await _locks.AcquireAsync(c.Id, ct).ConfigureAwait(false);
        c = await GetAsync(c.Id, ct).ConfigureAwait(false);
        if (c.State != ContainerState.Created)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {c.Id} is {c.State}; only a CREATED container can be started");
        }

        var handler = sandboxes.Handler(c.RuntimeHandler);
        if (c.RestoreDir is { } restoreDir)
        {
            await RestoreLockedAsync(c, restoreDir, handler, ct).ConfigureAwait(false);
            return;
        }

        try
        {
            // Not cancellable: once runc start runs, the record must say so.
            await oci.StartAsync(handler.Path, layout.RuntimeRoot(handler.Name), c.Id, CancellationToken.None).ConfigureAwait(false);
        }
        catch (CrestException e)
        {
            await store.PutContainerAsync(c with { State = ContainerState.Exited, ExitCode = 128, Reason = "StartError", Message = e.Message, FinishedAt = time.GetUtcNow() }, CancellationToken.None).ConfigureAwait(false);
            throw;
        }

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

        var handler = sandboxes.Handler(c.RuntimeHandler);
        var root = layout.RuntimeRoot(handler.Name);
        if (c.State == ContainerState.Running && timeout > TimeSpan.Zero)
        {
            await oci.KillAsync(handler.Path, root, c.Id, c.StopSignal, ct).ConfigureAwait(false);
            if (await WaitExitAsync(c.Id, timeout, ct).ConfigureAwait(false))
            {
                await GetAsync(c.Id, ct).ConfigureAwait(false);
                return;
            }
        }

        await oci.KillAsync(handler.Path, root, c.Id, 9, ct).ConfigureAwait(false);
        if (c.State == ContainerState.Created)
        {
            // Never started: runc's init is killed; conmon still records the exit.
            await oci.DeleteAsync(handler.Path, root, c.Id, ct).ConfigureAwait(false);
        }

        if (!await WaitExitAsync(c.Id, TimeSpan.FromSeconds(10), ct).ConfigureAwait(false))
        {
            // No exit file after SIGKILL: if the runtime no longer knows a live process, conmon died with it.
            var state = await oci.StateAsync(handler.Path, root, c.Id, ct).ConfigureAwait(false);
            if (state is null || state.Status == "stopped")
            {
                await MarkLostAsync(c, "the container stopped but its monitor recorded no exit code", ct).ConfigureAwait(false);
                return;
            }

            throw new CrestException(ErrorKind.DeadlineExceeded, $"container {c.Id} did not exit within 10 s of SIGKILL");
        }

        await GetAsync(c.Id, ct).ConfigureAwait(false);
    }

    private async Task MarkLostAsync(ContainerRecord c, string why, CancellationToken ct)
    {
        await store.PutContainerAsync(c with
        {
            State = ContainerState.Exited,
            ExitCode = 255,
            Reason = "Unknown",
            Message = why,
            FinishedAt = time.GetUtcNow(),
        }, ct).ConfigureAwait(false);
        events.Publish(c.Id, c.SandboxId, LifecycleEvent.Stopped);
    }

    /// <summary>Called when conmon writes an exit file: the container's new state is recorded and announced at once.</summary>
    public async Task ObserveExitAsync(string id, CancellationToken ct)
    {
        if (await store.GetContainerAsync(id, ct).ConfigureAwait(false) is { } c)
        {
            await RefreshAsync(c, ct).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Asks conmon to reopen the CRI log file (after the kubelet rotated it), through its control FIFO in the
    /// bundle: message type 2 is "reopen logs".
    /// </summary>
    public async Task ReopenLogAsync(string idOrPrefix, CancellationToken ct)
    {
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        if (c.State != ContainerState.Running)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {c.Id} is {c.State}; only a running container's log can be reopened");
        }

        var ctl = Path.Combine(layout.ContainerDir(c.Id), "bundle", "ctl");
        if (!File.Exists(ctl))
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {c.Id} has no conmon control FIFO at {ctl}");
        }

        // O_NONBLOCK: if conmon is gone there is no reader, and the open fails instead of hanging.
        await using (var fifo = new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(OpenFifoForWrite(ctl, c.Id), ownsHandle: true), FileAccess.Write, 1))
        {
            await fifo.WriteAsync("2 0 0\n"u8.ToArray(), ct).ConfigureAwait(false);
        }

        // conmon reopens when it reads the request; the call returns once the file is there again (the kubelet's log
        // rotation renames it first and expects the new one when the call returns), within a bound.
        if (c.LogFile.Length == 0)
        {
            return;
        }

        var deadline = time.GetUtcNow() + LogReopenTimeout;
        while (!File.Exists(c.LogFile))
        {
            if (time.GetUtcNow() > deadline)
            {
                throw new CrestException(ErrorKind.DeadlineExceeded,
                    $"container {c.Id}: conmon was asked to reopen {c.LogFile} but the file did not appear within {LogReopenTimeout.TotalSeconds:0} s; check that its directory exists and is writable");
            }

            await Task.Delay(LogReopenPoll, time, ct).ConfigureAwait(false);
        }
    }

    private static readonly TimeSpan LogReopenTimeout = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan LogReopenPoll = TimeSpan.FromMilliseconds(5);

    private static int OpenFifoForWrite(string path, string id)
    {
        var fd = FileKinds.OpenWriteNonBlocking(path);
        return fd >= 0 ? fd : throw new CrestException(ErrorKind.FailedPrecondition, $"container {id}: conmon is not listening on {path}");
    }

    /// <summary>A container's resource use at one moment (CRI ContainerStats).</summary>
    public sealed record ContainerUsage(ContainerRecord Container, DateTimeOffset Time, CgroupUsage? Cgroup, long WritableBytes, long WritableInodes, string WritableLayerPath);

    /// <summary>CPU, memory and writable-layer use of a container, from its cgroup and its overlay upper directory.</summary>
    public async Task<ContainerUsage> StatsAsync(string idOrPrefix, CancellationToken ct)
    {
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        var sandbox = await sandboxes.FindAsync(c.SandboxId, ct).ConfigureAwait(false);
        var cgroup = sandbox is null || c.State != ContainerState.Running ? null : CgroupStats.Read($"{sandbox.CgroupsPath}/crest-{c.Id}");
        var upper = Path.Combine(layout.ContainerDir(c.Id), "upper");
        var writable = ImageService.Usage(upper, upper);
        return new ContainerUsage(c, time.GetUtcNow(), cgroup, writable.Bytes, writable.Inodes, upper);
    }

    /// <summary>A pod's resource use: its running containers summed, and its network interface counters.</summary>
    public sealed record PodUsage(SandboxRecord Sandbox, DateTimeOffset Time, IReadOnlyList<ContainerUsage> Containers, ulong CpuNanoseconds, ulong WorkingSetBytes, ulong UsageBytes, (ulong Rx, ulong Tx)? Network);

    public async Task<PodUsage> PodStatsAsync(string sandboxId, CancellationToken ct)
    {
        var sandbox = await sandboxes.GetAsync(sandboxId, ct).ConfigureAwait(false);
        var usages = new List<ContainerUsage>();
        foreach (var c in (await ListAsync(ct).ConfigureAwait(false)).Where(c => c.SandboxId == sandbox.Id && c.State == ContainerState.Running))
        {
            usages.Add(await StatsAsync(c.Id, ct).ConfigureAwait(false));
        }

        var infra = CgroupStats.Read($"{sandbox.CgroupsPath}/crest-{sandbox.Id}");
        var cgroups = usages.Select(u => u.Cgroup).Append(infra).OfType<CgroupUsage>().ToList();
        return new PodUsage(sandbox, time.GetUtcNow(), usages,
            (ulong)cgroups.Sum(g => (decimal)g.CpuUsageNanoseconds), (ulong)cgroups.Sum(g => (decimal)g.MemoryWorkingSetBytes), (ulong)cgroups.Sum(g => (decimal)g.MemoryUsageBytes),
            sandbox.State == SandboxState.Ready ? NetworkCounters(sandbox.InfraPid) : null);
    }

    /// <summary>eth0's byte counters as the pod sees them, from /proc/&lt;infra pid&gt;/net/dev.</summary>
    private static (ulong Rx, ulong Tx)? NetworkCounters(int infraPid)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{infraPid}/net/dev"))
            {
                var colon = line.IndexOf(':', StringComparison.Ordinal);
                if (colon > 0 && line[..colon].Trim() == CniNetwork.InterfaceName)
                {
                    var f = line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    return (ulong.Parse(f[0], CultureInfo.InvariantCulture), ulong.Parse(f[8], CultureInfo.InvariantCulture));
                }
            }
        }
        catch (IOException)
        {
        }

        return null;
    }

    /// <summary>Applies new CPU and memory limits to a created or running container, and records them.</summary>
    public async Task UpdateResourcesAsync(string idOrPrefix, ResourceSpec resources, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(resources);
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
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
        var handler = sandboxes.Handler(c.RuntimeHandler);
        await oci.UpdateAsync(handler.Path, layout.RuntimeRoot(handler.Name), c.Id,
            JsonSerializer.Serialize(spec, RuntimeSpecJson.Default.SpecResources), ct).ConfigureAwait(false);
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

        await TearDownAsync(c, ct).ConfigureAwait(false);
        await store.DeleteContainerAsync(c.Id, ct).ConfigureAwait(false);
        events.Publish(c.Id, c.SandboxId, LifecycleEvent.Deleted);
    }

    public async Task<ContainerRecord> GetAsync(string idOrPrefix, CancellationToken ct)
    {
        if (string.IsNullOrWhiteSpace(idOrPrefix))
        {
            throw new CrestException(ErrorKind.InvalidArgument, "a container ID is required");
        }

        var matches = (await store.ListContainersAsync(ct).ConfigureAwait(false)).Where(c => c.Id.StartsWith(idOrPrefix, StringComparison.Ordinal)).ToList();
        return matches.Count switch
        {
            1 => await RefreshAsync(matches[0], ct).ConfigureAwait(false),
            0 => throw new CrestException(ErrorKind.NotFound, $"container {idOrPrefix} does not exist"),
            _ => throw new CrestException(ErrorKind.InvalidArgument, $"container ID prefix {idOrPrefix} is ambiguous: {matches.Count} containers match"),
        };
    }

    public async Task<IReadOnlyList<ContainerRecord>> ListAsync(CancellationToken ct)
    {
        var result = new List<ContainerRecord>();
        foreach (var c in await store.ListContainersAsync(ct).ConfigureAwait(false))
        {
            if (c.State != ContainerState.Creating)
            {
                result.Add(await RefreshAsync(c, ct).ConfigureAwait(false));
            }
        }

        return result;
    }

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

                if (c.State == ContainerState.Created && sandboxes.TryHandler(c.RuntimeHandler) is { } h
                    && await oci.StateAsync(h.Path, layout.RuntimeRoot(h.Name), c.Id, ct).ConfigureAwait(false) is { Status: "running" } running)
                {
                    // crestd died between runc start (or restore) and recording it.
                    await store.PutContainerAsync(c with { State = ContainerState.Running, StartedAt = time.GetUtcNow(), Pid = running.Pid > 0 ? running.Pid : c.Pid, RestoreDir = null }, ct).ConfigureAwait(false);
                }
                else if (c.State == ContainerState.Created && c.RestoreDir is not null && !linux.MountsUnder(layout.ContainerDir(c.Id)).Any())
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

    /// <summary>Reads conmon's exit file for a container that was created or running.</summary>
    private async Task<ContainerRecord> RefreshAsync(ContainerRecord c, CancellationToken ct)
    {
        if (c.State is not (ContainerState.Running or ContainerState.Created) || (c.State == ContainerState.Created && c.RestoreDir is not null))
        {
            return c;
        }

        var exitFile = Path.Combine(layout.ExitDir, c.Id);
        if (!File.Exists(exitFile))
        {
            // No exit file and no conmon: the monitor died (or the node rebooted and /run was emptied).
            if (!ConmonAlive(c.Id))
            {
                await MarkLostAsync(c, "its conmon monitor is gone and recorded no exit code (killed, or the node rebooted)", ct).ConfigureAwait(false);
                return (await store.GetContainerAsync(c.Id, ct).ConfigureAwait(false))!;
            }

            return c;
        }

        var text = (await File.ReadAllTextAsync(exitFile, ct).ConfigureAwait(false)).Trim();
        var code = int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) ? n : 255;
        var oom = File.Exists(Path.Combine(layout.ContainerStateDir(c.Id), "persist", "oom"));
        var updated = c with
        {
            State = ContainerState.Exited,
            ExitCode = code,
            // A process that exits at once can write its exit file before StartContainer recorded the start.
            FinishedAt = c.StartedAt is { } started && started > File.GetLastWriteTimeUtc(exitFile) ? started : File.GetLastWriteTimeUtc(exitFile),
            Reason = oom ? "OOMKilled" : code == 0 ? "Completed" : "Error",
        };
        await store.PutContainerAsync(updated, ct).ConfigureAwait(false);
        events.Publish(c.Id, c.SandboxId, LifecycleEvent.Stopped);
        return updated;
    }

    private ConmonCreateOptions ConmonOptions(ContainerRecord c, SandboxRecord sandbox, RuntimeHandlerOptions handler)
    {
        var state = layout.ContainerStateDir(c.Id);
        return new ConmonCreateOptions
        {
            ContainerId = c.Id,
            Name = $"k8s_{c.Spec.Name}_{sandbox.Spec.Name}_{sandbox.Spec.Namespace}_{sandbox.Spec.Uid}_{c.Spec.Attempt}",
            RuntimePath = ExecutableSearch.Resolve(handler.Path) ?? handler.Path,
            RuntimeRoot = layout.RuntimeRoot(handler.Name),
            Bundle = Path.Combine(layout.ContainerDir(c.Id), "bundle"),
            ContainerPidFile = Path.Combine(state, "pid"),
            ConmonPidFile = Path.Combine(state, "conmon.pid"),
            ExitDir = layout.ExitDir,
            PersistDir = Path.Combine(state, "persist"),
            SocketDir = layout.SocketDir,
            LogPath = c.LogFile,
            Terminal = c.Spec.Tty,
            Stdin = c.Spec.Stdin,
        };
    }

    /// <summary>The private directory a checkpoint is kept in between CreateContainer and StartContainer.</summary>
    public string RestoreDir(string id) => Path.Combine(layout.ContainerDir(id), "restore");

    /// <summary>
    /// StartContainer for a container made from a checkpoint: the rootfs diff and deletions are applied to the
    /// new rootfs, missing bind-mount sources are recreated, and conmon runs <c>runtime restore</c> into the new
    /// pod's namespaces and cgroup. A failure leaves the container EXITED (128, StartError) with the lines of
    /// CRIU's restore.log that say why, and nothing running or registered with the runtime.
    /// </summary>
    private async Task RestoreLockedAsync(ContainerRecord c, string restoreDir, RuntimeHandlerOptions handler, CancellationToken ct)
    {
        var sandbox = await sandboxes.GetAsync(c.SandboxId, ct).ConfigureAwait(false);
        if (sandbox.State != SandboxState.Ready)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"pod sandbox {sandbox.Id} is {sandbox.State}, not ready; container {c.Id} cannot be restored into it");
        }

        var bundle = Path.Combine(layout.ContainerDir(c.Id), "bundle");
        var started = time.GetUtcNow();
        try
        {
            if (!File.Exists(Path.Combine(restoreDir, "checkpoint", "inventory.img")))
            {
                throw new CrestException(ErrorKind.FailedPrecondition, $"container {c.Id}: a complete checkpoint cannot be found (checkpoint/inventory.img is missing)");
            }

            await restoreSteps.ApplyRootfsAsync(restoreDir, Path.Combine(layout.ContainerDir(c.Id), "rootfs"), c, ct).ConfigureAwait(false);
            var options = ConmonOptions(c, sandbox, handler) with
            {
                RestoreImagePath = Path.Combine(restoreDir, "checkpoint"),
                RestoreOptions = restoreSteps.RuntimeOptions,
            };
            // Not cancellable: once the runtime restores, the record must say so.
            var pid = await oci.CreateAsync(options, CancellationToken.None).ConfigureAwait(false);
            var running = c with { State = ContainerState.Running, Pid = pid, StartedAt = time.GetUtcNow(), RestoreDir = null };
            await store.PutContainerAsync(running, CancellationToken.None).ConfigureAwait(false);
            RuntimeLog.ContainerRestored(logger, c.Id, pid, (long)(time.GetUtcNow() - started).TotalMilliseconds);
            events.Publish(c.Id, c.SandboxId, LifecycleEvent.Started);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Whatever went wrong (the archive's data is untrusted), the container ends EXITED and can be removed.
            var why = e.Message + CriuLogExcerpt(Path.Combine(bundle, "restore.log"));
            await Step(c.Id, () => oci.DeleteAsync(handler.Path, layout.RuntimeRoot(handler.Name), c.Id, CancellationToken.None)).ConfigureAwait(false);
            await store.PutContainerAsync(c with { State = ContainerState.Exited, ExitCode = 128, Reason = "StartError", Message = why, FinishedAt = time.GetUtcNow(), RestoreDir = null },
                CancellationToken.None).ConfigureAwait(false);
            events.Publish(c.Id, c.SandboxId, LifecycleEvent.Stopped);
            throw new CrestException(e is CrestException ce ? ce.Kind : ErrorKind.Internal, $"container {c.Id} could not be restored: {why}", e);
        }
        finally
        {
            await Step(c.Id, () =>
            {
                if (Directory.Exists(restoreDir))
                {
                    Directory.Delete(restoreDir, recursive: true);
                }

                return Task.CompletedTask;
            }).ConfigureAwait(false);
        }
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

    /// <summary>Copies the log of the checkpointed container to the new log path, never through a link.</summary>
    private static async Task CopyLogAsync(string source, string destination, CancellationToken ct)
    {
        if (!FileKinds.IsRegularFile(source))
        {
            return;
        }

        await using var input = new FileStream(FileKinds.OpenReadNoFollow(source), FileAccess.Read);
        await using var output = new FileStream(FileKinds.CreateNoFollow(destination), FileAccess.Write);
        await input.CopyToAsync(output, ct).ConfigureAwait(false);
    }

    /// <summary>A container's result of a CRIU dump taken while it was paused.</summary>
    public sealed record ContainerDump(ContainerRecord Container, SandboxRecord Sandbox, TimeSpan Paused, TimeSpan CriuDump, TimeSpan RootfsCapture);

    /// <summary>
    /// Checkpoints a running container and leaves it running: pause (cgroup freezer), CRIU dump through the runtime
    /// (<c>checkpoint --leave-running</c>), <paramref name="captureRootfs"/> on the overlay upper directory while
    /// the processes are still frozen (so memory and files agree), then resume, whatever failed.
    /// Nothing else happens while the container is paused: the archive is built afterwards by the caller.
    /// </summary>
    public async Task<ContainerDump> DumpAsync(string idOrPrefix, string imagePath, string workPath, bool tcpEstablished,
        Func<ContainerRecord, string, CancellationToken, Task> captureRootfs, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(captureRootfs);
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        using var exclusive = await _locks.AcquireAsync(c.Id, ct).ConfigureAwait(false);
        c = await GetAsync(c.Id, ct).ConfigureAwait(false);
        if (c.State != ContainerState.Running)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"container {c.Id} is in CONTAINER_{c.State.ToString().ToUpperInvariant()} state. only CONTAINER_RUNNING containers can be checkpointed");
        }

        var sandbox = await sandboxes.GetAsync(c.SandboxId, ct).ConfigureAwait(false);
        if (sandbox.Spec.Namespaces.HasPodUserNamespace)
        {
            // A restore refuses a checkpoint holding a user namespace, so no archive is made that none could restore.
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"container {c.Id} runs in pod sandbox {sandbox.Id}'s own user namespace (userns_options); checkpoints cover containers in the node's user namespace only");
        }

        var handler = sandboxes.Handler(c.RuntimeHandler);
        var root = layout.RuntimeRoot(handler.Name);
        var runtimePath = ExecutableSearch.Resolve(handler.Path) ?? handler.Path;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        TimeSpan dumped = default, captured = default, paused;
        try
        {
            // Inside the try and not cancellable: a pause that took effect is always undone below.
            await oci.PauseAsync(runtimePath, root, c.Id, CancellationToken.None).ConfigureAwait(false);
            await oci.CheckpointAsync(new CheckpointCommand
            {
                RuntimePath = runtimePath,
                RuntimeRoot = root,
                ContainerId = c.Id,
                ImagePath = imagePath,
                WorkPath = workPath,
                TcpEstablished = tcpEstablished,
            }, ct).ConfigureAwait(false);
            dumped = clock.Elapsed;
            await captureRootfs(c, Path.Combine(layout.ContainerDir(c.Id), "upper"), ct).ConfigureAwait(false);
            captured = clock.Elapsed - dumped;
        }
        finally
        {
            // Never leave the container frozen, whatever failed or was cancelled.
            await oci.ResumeAsync(runtimePath, root, c.Id, CancellationToken.None).ConfigureAwait(false);
            paused = clock.Elapsed;
        }

        return new ContainerDump(c, sandbox, paused, dumped, captured);
    }

    private bool ConmonAlive(string id)
    {
        var pidFile = Path.Combine(layout.ContainerStateDir(id), "conmon.pid");
        try
        {
            return int.TryParse(File.ReadAllText(pidFile).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && linux.IsAlive(pid);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>The CRI log file: log_path is relative to the pod's log_directory and may not leave it.</summary>
    internal static string LogFile(string logDirectory, string logPath, string container)
    {
        if (logDirectory.Length == 0 || logPath.Length == 0)
        {
            return "";
        }

        var full = Path.GetFullPath(Path.Combine(logDirectory, logPath));
        var root = Path.GetFullPath(logDirectory).TrimEnd('/') + "/";
        return Path.IsPathRooted(logPath) || !full.StartsWith(root, StringComparison.Ordinal)
            ? throw new CrestException(ErrorKind.InvalidArgument, $"container {container}: log_path \"{logPath}\" must be a relative path inside the pod's log directory {logDirectory}")
            : full;
    }

    private async Task<bool> WaitExitAsync(string id, TimeSpan timeout, CancellationToken ct)
    {
        var exitFile = Path.Combine(layout.ExitDir, id);
        var deadline = time.GetUtcNow() + timeout;
        while (!File.Exists(exitFile))
        {
            if (time.GetUtcNow() >= deadline)
            {
                return false;
            }

            await Task.Delay(25, ct).ConfigureAwait(false);
        }

        return true;
    }

    private async Task TearDownAsync(ContainerRecord c, CancellationToken ct)
    {
        if (sandboxes.TryHandler(c.RuntimeHandler) is { } handler)
        {
            await Step(c.Id, () => oci.DeleteAsync(handler.Path, layout.RuntimeRoot(handler.Name), c.Id, ct)).ConfigureAwait(false);
        }

        var dir = layout.ContainerDir(c.Id);
        await Step(c.Id, () => { linux.Unmount(Path.Combine(dir, "rootfs")); return Task.CompletedTask; }).ConfigureAwait(false);
        // Left mounted only if crestd died while building the rootfs; a recursive delete must never walk into an image layer.
        await Step(c.Id, () => { UnmountIdMapped(dir); return Task.CompletedTask; }).ConfigureAwait(false);
        await Step(c.Id, () =>
        {
            if (Directory.Exists(dir))
            {
                Directory.Delete(dir, recursive: true);
            }

            var state = layout.ContainerStateDir(c.Id);
            if (Directory.Exists(state))
            {
                Directory.Delete(state, recursive: true);
            }

            if (File.Exists(Path.Combine(layout.ExitDir, c.Id)))
            {
                File.Delete(Path.Combine(layout.ExitDir, c.Id));
            }

            var attach = Path.Combine(layout.SocketDir, c.Id);
            if (Directory.Exists(attach))
            {
                Directory.Delete(attach, recursive: true);
            }

            return Task.CompletedTask;
        }).ConfigureAwait(false);
        await Step(c.Id, () => imageMetadata.RemoveSnapshotLeasesAsync(c.Id, ct)).ConfigureAwait(false);
    }

    private async Task Step(string id, Func<Task> step)
    {
        try
        {
            await step().ConfigureAwait(false);
        }
        catch (Exception e) when (e is CrestException or IOException or UnauthorizedAccessException)
        {
            RuntimeLog.CleanupFailed(logger, id, e.Message);
        }
    }

    internal static int Signal(string? stopSignal)
    {
        if (string.IsNullOrWhiteSpace(stopSignal))
        {
            return 15;
        }

        var s = stopSignal.Trim().ToUpperInvariant();
        if (int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var n))
        {
            return n;
        }

        s = s.StartsWith("SIG", StringComparison.Ordinal) ? s[3..] : s;
        if (s.StartsWith("RTMIN+", StringComparison.Ordinal) && int.TryParse(s[6..], NumberStyles.None, CultureInfo.InvariantCulture, out var plus) && plus <= 30)
        {
            return 34 + plus;
        }

        return s switch
        {
            "HUP" => 1, "INT" => 2, "QUIT" => 3, "KILL" => 9, "USR1" => 10, "USR2" => 12, "TERM" => 15, "WINCH" => 28, "PWR" => 30,
            "RTMIN" => 34,
            // An image's stop signal that Crest cannot name must not make the container unstoppable.
            _ => 15,
        };
    }

    private static SpecDevice DeviceOf(DeviceSpec d)
    {
        var (type, major, minor) = DeviceNumbers.Of(d.HostPath);
        if (type is not ("c" or "b"))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"device {d.HostPath} is not a character or block device");
        }

        var permissions = string.IsNullOrEmpty(d.Permissions) ? "rwm" : d.Permissions;
        if (permissions.Any(ch => ch is not ('r' or 'w' or 'm')))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"device {d.HostPath}: permissions \"{d.Permissions}\" must be letters from r, w and m");
        }

        return new SpecDevice { Path = d.ContainerPath, Type = type, Major = major, Minor = minor, FileMode = 0x1B6, Permissions = permissions };
    }
}

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
        foreach (var c in (await containers.ListAsync(ct).ConfigureAwait(false)).Where(c => c.SandboxId == sandbox.Id))
        {
            await containers.StopAsync(c.Id, TimeSpan.Zero, ct).ConfigureAwait(false);
        }

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
        foreach (var c in (await containers.ListAsync(ct).ConfigureAwait(false)).Where(c => c.SandboxId == sandbox.Id))
        {
            await containers.RemoveAsync(c.Id, ct).ConfigureAwait(false);
        }

        await sandboxes.RemoveAsync(sandbox, ct).ConfigureAwait(false);
    }
}
