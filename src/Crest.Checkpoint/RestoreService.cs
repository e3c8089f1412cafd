using System.Globalization;
using System.Security.Cryptography;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Images;
using Crest.Linux;
using Crest.Runtime;
using Microsoft.Extensions.Logging;

namespace Crest.Checkpoint;

/// <summary>The operator's restore settings ([restore] in config.toml).</summary>
public sealed record RestoreOptions
{
    /// <summary>Restore through CreateContainer at all; off by default, as in containerd >= 2.2.7.</summary>
    public bool ViaCreate { get; init; }
    public bool TcpEstablished { get; init; }
    public RestoreLimits Limits { get; init; } = new();
    /// <summary>Policy checks reported but not enforced (RestorePolicy.Checks): for trusted registries only.</summary>
    public IReadOnlySet<string> RelaxedChecks { get; init; } = new HashSet<string>(StringComparer.Ordinal);
}

/// <summary>
/// Restore through CRI CreateContainer: decides whether an image string is a checkpoint, builds and checks its
/// <see cref="RestorePlan"/> (unpacked, normalised, the policy enforced, the base image present by digest, pulled
/// synchronously if missing, the metadata adapted to the new pod, CRIU's options chosen) and hands it to
/// <see cref="ContainerService"/>, which executes it: the container is created now and restored by StartContainer.
/// </summary>
public sealed partial class RestoreService(
    ImageService images,
    ContainerService containers,
    SandboxService sandboxes,
    CrestPaths paths,
    RestoreOptions options,
    RootfsStaging rootfsStaging,
    ContainerBundles bundles,
    ArchivePageMounts archivePages,
    ILogger<RestoreService> logger)
{
    /// <summary>The annotation keys that mark an image as a checkpoint (checkpointctl/containerd, CRI-O, Podman).</summary>
    public static readonly IReadOnlyList<string> CheckpointImageAnnotations = Format.CheckpointImageAnnotations.Markers;

    /// <summary>At start: checkpoints a crashed crestd was unpacking for CreateContainer are removed (they hold memory pages).</summary>
    public int SweepStaging()
    {
        var root = paths.Restores;
        if (!Directory.Exists(root))
        {
            return 0;
        }

        var n = 0;
        foreach (var dir in Directory.EnumerateFileSystemEntries(root))
        {
            if (FileKinds.IsDirectory(dir))
            {
                bundles.DeleteRestoreDirectory(dir);
            }
            else
            {
                File.Delete(dir);
            }

            n++;
        }

        return n;
    }

    /// <summary>Whether <paramref name="image"/> names a checkpoint: an existing file (an archive) or a local image carrying a checkpoint marker.</summary>
    public async Task<CheckpointSourceKind?> DetectAsync(string image, CancellationToken ct)
    {
        if (string.IsNullOrWhiteSpace(image))
        {
            return null;
        }

        if (Path.IsPathRooted(image) && File.Exists(image))
        {
            return CheckpointSourceKind.Archive;
        }

        if (paths.IsReceivedCheckpoint(image))
        {
            // A migration archive this node unpacked as it arrived (WriteArchive with unpack); gone once restored.
            return FileKinds.IsDirectory(image) ? CheckpointSourceKind.Received : throw ReceivedGone(image, null);
        }

        if (await images.InspectAsync(image, ct).ConfigureAwait(false) is not { } details)
        {
            return null;
        }

        var annotations = await images.AnnotationsAsync(details, ct).ConfigureAwait(false);
        return CheckpointImageAnnotations.Any(annotations.ContainsKey) ? CheckpointSourceKind.Image : null;
    }

    public async Task<ContainerRecord> CreateAsync(string sandboxId, ContainerSpec request, CheckpointSourceKind kind, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (!options.ViaCreate)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"{request.Image} is a checkpoint, but restore via CreateContainer is disabled by configuration; set [restore] via_create = true in config.toml to allow it");
        }

        return await CreateFromCheckpointAsync(sandboxId, request, request.Image, kind, request.UserSpecifiedImage is { Length: > 0 } u ? u : request.Image, null, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Creates a container restored from the checkpoint at <paramref name="source"/> (an archive, or a local checkpoint
    /// image) with <paramref name="request"/>'s config: the plan is read, checked against the request and handed to
    /// the runtime. <paramref name="checkpointName"/> is what the container's checkpointImage annotation says it came
    /// from; <paramref name="criu"/> overrides the node's CRIU choices (a pod checkpoint restores as it was dumped). CreateContainer calls it when restore through CreateContainer is enabled; RestorePod for each container.
    /// </summary>
    public async Task<ContainerRecord> CreateFromCheckpointAsync(string sandboxId, ContainerSpec request, string source, CheckpointSourceKind kind, string checkpointName,
        CriuRestoreOptions? criu, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(request);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var sandbox = await sandboxes.GetAsync(sandboxId, ct).ConfigureAwait(false);
        var staging = Path.Combine(paths.Restores, Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16)));
        Directory.CreateDirectory(Path.GetDirectoryName(staging)!, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        if (kind == CheckpointSourceKind.Received)
        {
            // Claimed by a rename: one restore consumes what arrived, and a second CreateContainer naming it finds nothing.
            ClaimReceived(source, staging);
        }
        else
        {
            Directory.CreateDirectory(staging, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        try
        {
            var plan = await ReadAsync(source, kind, staging, ct).ConfigureAwait(false);
            CrashPoints.Hit(CrashPoints.RestoreStagingUnpacked);
            if (criu?.LeaveOutSysVShm == true && Directory.Exists(Path.Combine(staging, CheckpointFiles.CriuImages)))
            {
                // Every container of a pod dumps the whole pod IPC namespace; another restore (or Crest) creates its segments.
                foreach (var image in Directory.EnumerateFiles(Path.Combine(staging, CheckpointFiles.CriuImages), "ipcns-shm-*.img"))
                {
                    File.Delete(image);
                }
            }

            var missing = plan.MountDestinations.Where(d => !request.Mounts.Any(m => "/" + m.ContainerPath.Trim('/') == d)).ToList();
            if (missing.Count > 0)
            {
                throw new CrestException(ErrorKind.InvalidArgument,
                    $"restoring {source} (container {request.Name}) expects following bind mounts defined ({string.Join(", ", missing)}); declare them in the container config's mounts");
            }

            var threads = EnforcePolicy(plan, request);
            var baseImage = await EnsureBaseImageAsync(plan, ct).ConfigureAwait(false);
            if (request.Security.Namespaces.Pid == NamespaceMode.Container && plan.JoinedPidNamespace)
            {
                // runc recorded the joined pid namespace as CRIU's external extRootPidNS: CRIU can restore the process
                // only into a joined namespace again. Widening the request's private namespace is not Crest's call.
                throw new CrestException(ErrorKind.FailedPrecondition,
                    $"checkpoint {plan.Source} was taken in a shared (pod) pid namespace, but the container config asks for a private one; "
                    + "restore it with linux.security_context.namespace_options.pid = POD");
            }

            if (request.Security.Namespaces.Pid == NamespaceMode.Pod && !plan.JoinedPidNamespace)
            {
                // The reverse: the checkpointed tree owns its pid namespace (its first process is pid 1 there), and the
                // pod's namespace already has an init. CRIU cannot put it there.
                throw new CrestException(ErrorKind.FailedPrecondition,
                    $"checkpoint {plan.Source} was taken in a private pid namespace, but the container config asks for the pod's (namespace_options.pid = POD, "
                    + "the CRI default when namespace_options is absent); restore it with linux.security_context.namespace_options.pid = CONTAINER, as the kubelet sends");
            }

            var runtimeAnnotations = ClaimStagedRounds(plan, request.Annotations, staging);

            if (request.Annotations.TryGetValue(CriuRestoreOptions.LazyPagesFromAnnotation, out var pageServer))
            {
                // A post-copy migration's target: the memory comes from the source's page server while it runs.
                criu = (criu ?? CriuOptions(plan)) with { LazyPagesFrom = pageServer };
                // Over TLS: this node's page client identity and the source's page server certificate.
                var identity = request.Annotations.GetValueOrDefault(CriuRestoreOptions.PageClientIdentityAnnotation);
                var serverCertificate = request.Annotations.GetValueOrDefault(CriuRestoreOptions.PageServerCertificateAnnotation);
                if ((identity is null) != (serverCertificate is null))
                {
                    throw new CrestException(ErrorKind.InvalidArgument,
                        $"a post-copy restore over TLS needs both annotations {CriuRestoreOptions.PageClientIdentityAnnotation} and {CriuRestoreOptions.PageServerCertificateAnnotation}; the request has only one");
                }

                criu = criu with { LazyPagesIdentity = identity, LazyPagesServerCertificate = serverCertificate };
            }

            if (criu?.LazyPagesFrom is null && (request.Annotations.ContainsKey(CriuRestoreOptions.PageClientIdentityAnnotation) || request.Annotations.ContainsKey(CriuRestoreOptions.PageServerCertificateAnnotation)))
            {
                throw new CrestException(ErrorKind.InvalidArgument,
                    $"the annotations {CriuRestoreOptions.PageClientIdentityAnnotation} and {CriuRestoreOptions.PageServerCertificateAnnotation} belong to a post-copy restore, which {CriuRestoreOptions.LazyPagesFromAnnotation} asks for; the request lacks it");
            }

            string[] migrationOnly = [CriuRestoreOptions.LazyPagesFromAnnotation, CriuRestoreOptions.PageClientIdentityAnnotation, CriuRestoreOptions.PageServerCertificateAnnotation];
            runtimeAnnotations = runtimeAnnotations.Where(kv => !migrationOnly.Contains(kv.Key, StringComparer.Ordinal)).ToDictionary(StringComparer.Ordinal);

            var spec = request with
            {
                Image = baseImage,
                UserSpecifiedImage = request.UserSpecifiedImage,
                Annotations = AdaptAnnotations(plan, request, sandbox, checkpointName, logger),
                RuntimeAnnotations = runtimeAnnotations,
                // The spec needs a program; CRIU puts back the real one. The checkpoint's argv is only a placeholder here.
                Command = request.Command.Count == 0 && request.Args.Count == 0 ? plan.ProcessArgs : request.Command,
            };
            // The plan is complete: the runtime executes it (create now, CRIU at StartContainer) with the node's CRIU choices.
            var record = await containers.CreateAsync(sandbox.Id, spec, plan with { Criu = criu ?? CriuOptions(plan) }, ct).ConfigureAwait(false);
            if (request.Security.RunAsUser is null || request.Security.RunAsGroup is null)
            {
                await EnforceResolvedUserAsync(plan, record, threads, request.Security.RunAsUser is null).ConfigureAwait(false);
            }

            CheckpointLog.PreparedRestore(logger, record.Id, plan.Source, plan.Engine.ToString(), baseImage);
            CheckpointMetrics.RestorePrepared(clock.Elapsed);
            return record;
        }
        catch (Exception) when (CheckpointMetrics.RestoreFailed())
        {
            throw; // never reached: the filter counts the failure and declines
        }
        finally
        {
            // Moved into the container when it was made; a failure leaves it here, maybe with its page images mounted.
            // A cleanup that fails must not hide why the restore failed: the staging sweep at start tries again.
            try
            {
                bundles.DeleteRestoreDirectory(staging);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or CrestException)
            {
                CheckpointLog.StagingNotRemoved(logger, staging, e.Message);
            }
        }
    }

    /// <summary>Moves a received checkpoint into <paramref name="staging"/>; NotFound when it is gone (restored once already, or dropped).</summary>
    private static void ClaimReceived(string received, string staging)
    {
        try
        {
            Directory.Move(received, staging);
        }
        catch (DirectoryNotFoundException e)
        {
            throw ReceivedGone(received, e);
        }
    }

    private static CrestException ReceivedGone(string received, Exception? inner) =>
        new(ErrorKind.NotFound, $"the migration checkpoint {received} is not on this node: it was restored already, dropped, or crestd restarted since it arrived; send it again", inner);

    /// <summary>
    /// At start: the leave-stopped CRIU configuration an earlier crestd shared between restores is removed.
    /// Containers it restored name it in org.criu.config, and runc hands it to CRIU on their checkpoints too, which then
    /// left them stopped; CRIU skips a missing configuration file.
    /// </summary>
    public void DropSharedCriuConfig()
    {
        var dir = Path.Combine(paths.Root, "criu");
        var file = Path.Combine(dir, "leave-stopped.conf");
        if (FileKinds.IsRegularFile(file))
        {
            File.Delete(file);
        }

        if (Directory.Exists(dir) && !Directory.EnumerateFileSystemEntries(dir).Any())
        {
            Directory.Delete(dir);
        }
    }

    /// <summary>
    /// How CRIU restores: file locks as every engine dumps them; established TCP connections when [restore] allows it or
    /// when the checkpoint holds some (a migration that keeps the pod's address dumps them): CRIU refuses such a
    /// checkpoint without <c>--tcp-established</c>, so asking for it only turns a certain failure into an attempt.
    /// </summary>
    private CriuRestoreOptions CriuOptions(RestorePlan plan) => new()
    {
        FileLocks = true,
        TcpEstablished = options.TcpEstablished || HoldsEstablishedTcp(Path.Combine(plan.StagingDir, CheckpointFiles.CriuImages)),
    };

    /// <summary>CRIU writes one tcp-stream image per TCP connection it dumped with <c>--tcp-established</c>.</summary>
    internal static bool HoldsEstablishedTcp(string criuImages) =>
        Directory.Exists(criuImages) && Directory.EnumerateFiles(criuImages, "tcp-stream-*.img").Any();

    /// <summary>
    /// Reads the credentials, capabilities, seccomp state, namespaces, mounts and device nodes CRIU would put back and
    /// refuses the restore, before any pull or process, if they exceed what the request grants. Relaxed checks are logged, never silently skipped.
    /// </summary>
    private IReadOnlyList<CriuThread> EnforcePolicy(RestorePlan plan, ContainerSpec request)
    {
        var assessment = RestorePolicy.Assess(Path.Combine(plan.StagingDir, CheckpointFiles.CriuImages), request, options.Limits.MaxRootfsDiffBytes);
        var threads = assessment.Threads;
        if (threads.FirstOrDefault(t => t.Architecture != CriuImages.HostArchitecture) is { } foreign)
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"checkpoint {plan.Source} was made on {foreign.Architecture} (task {foreign.Pid}); this node is {CriuImages.HostArchitecture}, and CRIU restores only on the architecture it dumped on");
        }

        Enforce(plan, assessment.Violations);
        return threads;
    }

    /// <summary>
    /// The checks that need the user the container's spec resolved (from run_as_username or the image's USER, or the
    /// group behind a bare run_as_user): known only once the container is created, which is undone if they fail.
    /// </summary>
    private async Task EnforceResolvedUserAsync(RestorePlan plan, ContainerRecord container, IReadOnlyList<CriuThread> threads, bool userResolved)
    {
        // The record holds what the spec's process.user was built from.
        var user = container.User ?? new ProcessUser(0, 0, []);
        try
        {
            Enforce(plan, userResolved
                ? RestorePolicy.EvaluateResolvedUser(threads, user.Uid, user.Gid, user.Groups)
                : RestorePolicy.EvaluateResolvedGroups(threads, user.Gid, user.Groups));
        }
        catch (CrestException)
        {
            await containers.RemoveAsync(container.Id, CancellationToken.None).ConfigureAwait(false);
            throw;
        }
    }

    private void Enforce(RestorePlan plan, IReadOnlyList<PolicyViolation> violations)
    {
        foreach (var relaxed in violations.Where(v => options.RelaxedChecks.Contains(v.Check)))
        {
            CheckpointLog.PolicyRelaxed(logger, plan.Source, relaxed.Check, relaxed.ToString());
        }

        var enforced = violations.Where(v => !options.RelaxedChecks.Contains(v.Check)).ToList();
        if (enforced.Count > 0)
        {
            throw new CrestException(ErrorKind.PermissionDenied,
                $"restore of {plan.Source} refused: the checkpoint would grant more than the container config allows ({enforced.Count} violation{(enforced.Count > 1 ? "s" : "")}): "
                + string.Join("; ", enforced.Take(8).Select(v => v.ToString()))
                + ". Restore it with a security context that grants this, or, for checkpoints from a trusted source only, relax the check with [restore] relaxed_checks");
        }
    }

    /// <summary>Unpacks and reads a checkpoint into <paramref name="staging"/>.</summary>
    public async Task<RestorePlan> ReadAsync(string source, CheckpointSourceKind kind, string staging, CancellationToken ct)
    {
        var reader = new CheckpointReader(options.Limits);
        if (kind == CheckpointSourceKind.Archive)
        {
            return await reader.ReadArchiveAsync(source, staging, ct, archivePages).ConfigureAwait(false);
        }

        if (kind == CheckpointSourceKind.Received)
        {
            // Unpacked as it arrived, under the same extraction checks and caps as an archive (MigrationService.ReceiveAsync).
            return reader.Read(staging, source, kind);
        }

        var details = await images.InspectAsync(source, ct).ConfigureAwait(false)
            ?? throw new CrestException(ErrorKind.NotFound, $"checkpoint image {source} is not present on this node");
        var layers = details.Image.ChainId is { } chain ? await images.Snapshots.LowerDirsAsync(chain, ct).ConfigureAwait(false) : [];
        return reader.ReadImageLayers(layers, source, staging, ct);
    }

    /// <summary>
    /// The base image, present locally: by digest (pulled synchronously if missing), else by a local ID the checkpoint
    /// names (never pulled), else by tag (pulled if missing, with a warning). No image is ever created or retagged
    /// from checkpoint metadata: the pull records only what the registry says.
    /// </summary>
    private async Task<string> EnsureBaseImageAsync(RestorePlan plan, CancellationToken ct)
    {
        if (plan.BaseImageDigestReference is { } byDigest)
        {
            if (await images.ResolveLocalAsync(byDigest, ct).ConfigureAwait(false) is not null)
            {
                return byDigest;
            }

            if (plan.BaseImageId is { } id0 && await images.ResolveLocalAsync(id0, ct).ConfigureAwait(false) is not null)
            {
                return id0;
            }

            CheckpointLog.PullingBaseImage(logger, plan.Source, byDigest);
            await PullAsync(byDigest, plan, ct).ConfigureAwait(false);
            return byDigest;
        }

        if (plan.BaseImageId is { } id && await images.ResolveLocalAsync(id, ct).ConfigureAwait(false) is not null)
        {
            return id;
        }

        if (plan.BaseImageName is { } tag)
        {
            CheckpointLog.BaseImageByTag(logger, plan.Source, tag);
            if (await images.ResolveLocalAsync(tag, ct).ConfigureAwait(false) is null)
            {
                CheckpointLog.PullingBaseImage(logger, plan.Source, tag);
                await PullAsync(tag, plan, ct).ConfigureAwait(false);
            }

            return tag;
        }

        throw new CrestException(ErrorKind.NotFound,
            $"checkpoint {plan.Source} was made from image {plan.BaseImageId}, which is not on this node and cannot be pulled (the checkpoint names no repository digest); pull or load that image first");
    }

    private async Task PullAsync(string reference, RestorePlan plan, CancellationToken ct)
    {
        try
        {
            // No credentials of the request's: the node's configured credentials for the registry apply.
            await images.PullAsync(reference, null, null, ct).ConfigureAwait(false);
        }
        catch (CrestException e)
        {
            throw new CrestException(e.Kind, $"checkpoint {plan.Source} needs its base image {reference}, which is not on this node and could not be pulled: {e.Message}", e);
        }
    }

    /// <summary>
    /// The restored container's annotations: the checkpoint's, with the pod UID, container hash and restart count taken
    /// from the request (the kubelet compares them), cdi.k8s.io/* dropped (they would grant devices), and
    /// restored, checkpointedAt and checkpointImage added.
    /// </summary>
    internal static Dictionary<string, string> AdaptAnnotations(RestorePlan plan, ContainerSpec request, SandboxRecord sandbox, string checkpointName, ILogger logger)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (k, v) in plan.Annotations)
        {
            if (k == "cdi.k8s.io" || k.StartsWith("cdi.k8s.io/", StringComparison.Ordinal))
            {
                CheckpointLog.DroppedAnnotation(logger, plan.Source, k);
                continue;
            }

            result[k] = v;
        }

        if (result.ContainsKey("io.kubernetes.pod.uid") && sandbox.Spec.Uid.Length > 0)
        {
            result["io.kubernetes.pod.uid"] = sandbox.Spec.Uid;
        }

        foreach (var key in new[] { "io.kubernetes.container.hash", "io.kubernetes.container.restartCount" })
        {
            if (result.ContainsKey(key) && request.Annotations.TryGetValue(key, out var fromRequest))
            {
                result[key] = fromRequest;
            }
        }

        result["restored"] = "true";
        result["checkpointedAt"] = plan.CheckpointedAt.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.FFFFFFF'Z'", CultureInfo.InvariantCulture);
        result["checkpointImage"] = checkpointName;
        return result;
    }
}
