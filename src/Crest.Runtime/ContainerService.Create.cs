using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using Crest.Core;
using Crest.Linux;
using Crest.Oci;

namespace Crest.Runtime;

// CreateContainer: the record first (Creating), then rootfs and spec; every step undone if a later one fails. Nothing runs
// until StartContainer, which hands the bundle to conmon and the runtime (as containerd makes its task at start).
public sealed partial class ContainerService
{
    public async Task<ContainerRecord> CreateAsync(string sandboxId, ContainerSpec spec, CancellationToken ct) =>
        await CreateAsync(sandboxId, spec, restore: null, ct).ConfigureAwait(false);

    /// <summary>
    /// Creates a container; with <paramref name="restore"/> it is made from a checkpoint (the first half of executing
    /// the plan): the unpacked checkpoint moves into the container's private restore directory, the old log is put in
    /// place, the plan's CRIU options are recorded, and no process is created until StartContainer restores it.
    /// </summary>
    public async Task<ContainerRecord> CreateAsync(string sandboxId, ContainerSpec spec, RestorePlan? restore, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var sandbox = await sandboxes.GetAsync(sandboxId, ct).ConfigureAwait(false);
        if (sandbox.State != SandboxState.Ready)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"pod sandbox {sandbox.Id} is {sandbox.State}, not ready; containers are created only in a ready pod");
        }

        CheckUserNamespace(spec, sandbox);
        var details = await bundles.ImageAsync(spec.Image, ct).ConfigureAwait(false);
        var runtime = runtimes.For(sandbox.RuntimeHandler);
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
            RuntimeHandler = runtime.Handler.Name,
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
            var bundle = bundles.For(id);
            details = await bundles.MountRootfsAsync(bundle, spec.Image, sandbox, ct).ConfigureAwait(false);
            CrashPoints.Hit(CrashPoints.ContainerRootfsMounted);
            var user = ContainerUser.Resolve(spec.Security, details.Config.Config?.User, bundle.Rootfs, spec.Name);
            record = record with { User = user };
            SpecSeccomp? localhostSeccomp = null;
            if (spec.Security.Seccomp == SeccompMode.Localhost)
            {
                var path = spec.Security.SeccompLocalhostPath ?? "";
                localhostSeccomp = File.Exists(path)
                    ? JsonSerializer.Deserialize(await File.ReadAllBytesAsync(path, ct).ConfigureAwait(false), RuntimeSpecJson.Default.SpecSeccomp)
                    : throw new CrestException(ErrorKind.InvalidArgument, $"seccomp profile {path} (Localhost) does not exist on this node");
            }

            var pod = sandboxes.Bundle(sandbox.Id);
            var runtimeSpec = SpecBuilder.ForContainer(WithCriuConfig(spec, bundle), new ContainerContext
            {
                ContainerId = id,
                Sandbox = sandbox,
                RootfsPath = bundle.Rootfs,
                Image = details.Config.Config,
                User = user,
                HostsFile = pod.HostsFile,
                HostnameFile = pod.HostnameFile,
                ResolvConfFile = pod.ResolvConfFile,
                ShmPath = pod.Shm,
                LocalhostSeccomp = localhostSeccomp,
                Devices = spec.Devices.Select(DeviceOf).ToList(),
                TargetPid = targetPid,
                NodeCapabilities = _nodeCapabilities.Value,
            });
            Directory.CreateDirectory(bundle.BundleDir);
            await RuntimeSpecFile.WriteAsync(bundle.ConfigJson, runtimeSpec, ct).ConfigureAwait(false);
            if (logFile.Length > 0)
            {
                Directory.CreateDirectory(Path.GetDirectoryName(logFile)!);
            }

            Directory.CreateDirectory(bundle.StateDir);
            record = record with { State = ContainerState.Created };
            if (restore is not null)
            {
                Directory.Move(restore.StagingDir, bundle.RestoreDir);
                File.SetUnixFileMode(bundle.RestoreDir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
                if (logFile.Length > 0 && restore.LogCopy is { } logCopy)
                {
                    await CopyLogAsync(Path.Combine(bundle.RestoreDir, logCopy), logFile, ct).ConfigureAwait(false);
                }

                record = record with { RestoreDir = bundle.RestoreDir, RestoreCriu = restore.Criu, Restored = true };
            }

            // No process yet (AwaitsProcess): conmon and runc create run at StartContainer.
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

    /// <summary>
    /// Every container names its own CRIU configuration file (<see cref="CriuConfigFile"/>): the runtime hands it to CRIU
    /// on every checkpoint and restore, and Crest writes it only for the run that needs options runc and crun have no
    /// flag for. A request's own <c>org.criu.config</c> is replaced: a file it named could make CRIU, which runs as
    /// root on the host, run any program (<c>action-script</c>).
    /// </summary>
    private static ContainerSpec WithCriuConfig(ContainerSpec spec, ContainerBundle bundle) =>
        spec with { RuntimeAnnotations = new Dictionary<string, string>(spec.RuntimeAnnotations ?? spec.Annotations, StringComparer.Ordinal) { [CriuRestoreOptions.ConfigAnnotation] = bundle.CriuConfig } };

    /// <summary>A container lives in its pod's user namespace; a request that names another one is refused.</summary>
    private static void CheckUserNamespace(ContainerSpec spec, SandboxRecord sandbox)
    {
        var pod = sandbox.Spec.Namespaces;
        if (spec.Security.Namespaces.User is not { } wanted)
        {
            return;
        }

        var podMode = pod.HasPodUserNamespace ? NamespaceMode.Pod : NamespaceMode.Node;
        var same = wanted.Mode == podMode
            && (podMode == NamespaceMode.Node || (wanted.Uids.SequenceEqual(pod.User!.Uids) && wanted.Gids.SequenceEqual(pod.User.Gids)));
        if (!same)
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"container {spec.Name} asks for user namespace mode {wanted.Mode.ToString().ToUpperInvariant()} with its own mappings, but pod sandbox {sandbox.Id} "
                + $"has mode {podMode.ToString().ToUpperInvariant()}; a container shares its pod's user namespace, so give it the pod's userns_options or none");
        }
    }

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
