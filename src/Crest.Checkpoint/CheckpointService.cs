using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Linux;
using Crest.Runtime;
using Microsoft.Extensions.Logging;

namespace Crest.Checkpoint;

/// <summary>The operator's checkpoint settings ([checkpoint] in config.toml), as the domain sees them.</summary>
public sealed record CheckpointOptions
{
    public bool Enabled { get; init; } = true;
    public bool TcpEstablished { get; init; }
    /// <summary>
    /// The floor of every checkpoint's deadline. A request's timeout below it (0 included) is raised to it, as the
    /// kubelet does before it calls the runtime; a larger one is honoured.
    /// </summary>
    public TimeSpan DefaultTimeout { get; init; } = TimeSpan.FromMinutes(5);
    /// <summary>Compression of the outer archive on the CRI path (none: what the kubelet and other engines expect).</summary>
    public ArchiveCompression Compression { get; init; } = ArchiveCompression.None;
}

/// <summary>What one checkpoint did and measured.</summary>
public sealed record CheckpointResult(
    string ContainerId,
    string Location,
    long ArchiveBytes,
    TimeSpan Total,
    TimeSpan Paused,
    TimeSpan CriuDump,
    TimeSpan RootfsCapture,
    TimeSpan ArchiveWrite,
    DumpStatistics? Criu);

/// <summary>
/// CRI CheckpointContainer: pause, CRIU dump (leave running), rootfs changes from the overlay upper directory,
/// resume; only then the archive is assembled and written beside <c>location</c> and renamed into place, so the
/// freeze window holds no archive or compression work and a failure never leaves a partial archive.
/// </summary>
public sealed class CheckpointService(
    ContainerService containers,
    RuntimeLayout layout,
    ICriuProbe criu,
    CheckpointOptions options,
    TimeProvider time,
    ILogger<CheckpointService> logger)
{
    public async Task<CheckpointResult> CheckpointAsync(string idOrPrefix, string location, TimeSpan timeout, CancellationToken ct)
    {
        var total = Stopwatch.StartNew();
        if (!options.Enabled)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, "checkpoint is disabled by configuration ([checkpoint] enabled = false)");
        }

        var target = ValidateLocation(location);
        var container = await containers.GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        if (container.State != ContainerState.Running)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"container {container.Id} is in CONTAINER_{container.State.ToString().ToUpperInvariant()} state. only CONTAINER_RUNNING containers can be checkpointed");
        }

        var probe = await criu.ProbeAsync(ct).ConfigureAwait(false);
        if (probe.Problem is { } problem)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"cannot checkpoint container {container.Id}: {problem}");
        }

        var limit = EffectiveTimeout(timeout, options.DefaultTimeout);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(limit);
        var token = deadline.Token;

        // A fresh private work directory: removed first (never followed if something planted a link there).
        // A fresh private work directory per call, so two checkpoints of one container never share files.
        var work = Path.Combine(layout.ContainerDir(container.Id), "checkpoint-work-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)));
        RootfsDiffSummary? diff = null;
        long logLength = 0;
        try
        {
            Directory.CreateDirectory(work, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            var images = Path.Combine(work, CheckpointFiles.CriuImages);
            Directory.CreateDirectory(images, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            var spec = await ReadSpecAsync(container.Id, token).ConfigureAwait(false);
            var excluded = MountDestinations(spec);
            ContainerService.ContainerDump dump;
            try
            {
                dump = await containers.DumpAsync(container.Id, images, work, options.TcpEstablished, async (_, upper, innerCt) =>
                {
                    await using var output = new FileStream(Path.Combine(work, CheckpointFiles.RootfsDiff),
                        new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite, BufferSize = 1 << 20 });
                    diff = await RootfsDiff.WriteAsync(upper, output, excluded, innerCt).ConfigureAwait(false);
                    // The log copy ends where the log stood while frozen: lines written after the resume belong to the
                    // original, not to what a restore replays. Only the length is taken now; the copy comes later.
                    logLength = container.LogFile.Length > 0 && FileKinds.IsRegularFile(container.LogFile) ? new FileInfo(container.LogFile).Length : 0;
                }, token).ConfigureAwait(false);
            }
            catch (CrestException e) when (e.Kind != ErrorKind.FailedPrecondition)
            {
                throw new CrestException(e.Kind, e.Message + ContainerService.CriuLogExcerpt(Path.Combine(work, CheckpointFiles.DumpLog)), e);
            }

            var checkpointedAt = time.GetUtcNow();
            await WriteMetadataAsync(work, dump, spec, diff!, logLength, checkpointedAt, token).ConfigureAwait(false);
            var stats = ReadStats(Path.Combine(work, CheckpointFiles.StatsDump));
            if (!File.Exists(Path.Combine(images, "inventory.img")))
            {
                throw new CrestException(ErrorKind.Internal, $"checkpoint of container {container.Id}: CRIU reported success but wrote no inventory.img; no archive was written");
            }

            var archiveClock = Stopwatch.StartNew();
            var bytes = await WriteArchiveAsync(work, target, options.Compression, token).ConfigureAwait(false);
            var result = new CheckpointResult(container.Id, target, bytes, total.Elapsed, dump.Paused, dump.CriuDump, dump.RootfsCapture, archiveClock.Elapsed, stats);
            CheckpointLog.Checkpointed(logger, container.Id, target, bytes, (long)result.Total.TotalMilliseconds, (long)result.Paused.TotalMilliseconds,
                stats?.FrozenTimeUs ?? 0, stats?.PagesWritten ?? 0);
            CheckpointMetrics.Record(result);
            return result;
        }
        catch (Exception) when (CheckpointMetrics.CheckpointFailed())
        {
            throw; // never reached: the filter counts the failure and declines
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested && !ct.IsCancellationRequested)
        {
            throw new CrestException(ErrorKind.DeadlineExceeded,
                $"checkpoint of container {container.Id} did not finish within its {limit.TotalSeconds:0} s timeout; the container keeps running and no archive was written");
        }
        finally
        {
            RemoveFresh(work);
        }
    }

    /// <summary>The deadline of one checkpoint: the request's timeout, never below the configured default.</summary>
    internal static TimeSpan EffectiveTimeout(TimeSpan requested, TimeSpan configuredDefault) =>
        requested > configuredDefault ? requested : configuredDefault;

    /// <summary>location must be absolute, in an existing directory, and not a link or a directory itself.</summary>
    internal static string ValidateLocation(string location)
    {
        if (string.IsNullOrWhiteSpace(location) || !Path.IsPathRooted(location))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint location \"{location}\" must be an absolute path to the archive to write");
        }

        var full = Path.GetFullPath(location);
        var parent = Path.GetDirectoryName(full);
        if (parent is null || !Directory.Exists(parent))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint location {full}: the directory {parent} does not exist; create it first");
        }

        if (FileKinds.IsSymlink(full))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint location {full} is a symbolic link; Crest never writes an archive through a link: remove it or choose another path");
        }

        if (Directory.Exists(full))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint location {full} is a directory; give the path of the archive file to write");
        }

        return full;
    }

    private async Task<JsonObject> ReadSpecAsync(string id, CancellationToken ct)
    {
        var path = layout.Container(id).ConfigJson;
        return JsonNode.Parse(await File.ReadAllBytesAsync(path, ct).ConfigureAwait(false)) as JsonObject
            ?? throw new CrestException(ErrorKind.Internal, $"container {id}: {path} is not a JSON object");
    }

    private static List<string> MountDestinations(JsonObject spec) =>
        (spec["mounts"] as JsonArray ?? []).Select(m => m?["destination"]?.GetValue<string>()).OfType<string>().ToList();

    private static async Task WriteMetadataAsync(string work, ContainerService.ContainerDump dump, JsonObject spec, RootfsDiffSummary diff, long logLength, DateTimeOffset checkpointedAt, CancellationToken ct)
    {
        var c = dump.Container;
        var s = dump.Sandbox;
        var imageName = c.Spec.Image;
        var config = new ConfigDump
        {
            Id = c.Id,
            Name = $"k8s_{c.Spec.Name}_{s.Spec.Name}_{s.Spec.Namespace}_{s.Spec.Uid}_{c.Spec.Attempt}",
            RootfsImage = c.Spec.UserSpecifiedImage is { Length: > 0 } u ? u : imageName,
            RootfsImageRef = c.ImageRef,
            RootfsImageName = imageName,
            Runtime = c.RuntimeHandler,
            CreatedTime = c.CreatedAt,
            CheckpointedTime = checkpointedAt,
            RestoredTime = DateTimeOffset.MinValue,
            Restored = c.Restored,
        };
        await WriteJsonAsync(work, CheckpointFiles.ConfigDump, JsonSerializer.SerializeToUtf8Bytes(config, CheckpointJson.Default.ConfigDump), ct).ConfigureAwait(false);

        // spec.dump: the spec the container runs with, plus the annotations each engine's restore reads.
        var annotations = spec["annotations"] as JsonObject ?? [];
        spec["annotations"] = annotations;
        foreach (var (key, value) in EngineAnnotations(c, s))
        {
            annotations[key] = value;
        }

        await WriteJsonAsync(work, CheckpointFiles.SpecDump, JsonSerializer.SerializeToUtf8Bytes(spec), ct).ConfigureAwait(false);

        var status = new StatusDump
        {
            Id = c.Id,
            Metadata = new StatusMetadata { Name = c.Spec.Name, Attempt = c.Spec.Attempt },
            State = 1,
            CreatedAt = UnixNanoseconds(c.CreatedAt),
            StartedAt = c.StartedAt is { } started ? UnixNanoseconds(started) : 0,
            Image = new StatusImage { Image = imageName, UserSpecifiedImage = c.Spec.UserSpecifiedImage },
            ImageRef = c.ImageRef,
            ImageId = c.ImageId,
            Labels = c.Spec.Labels,
            Annotations = c.Spec.Annotations,
            Mounts = c.Spec.Mounts.Select(m => new StatusMount { ContainerPath = m.ContainerPath, HostPath = m.HostPath, ReadOnly = m.ReadOnly }).ToList(),
            LogPath = c.LogFile,
        };
        await WriteJsonAsync(work, CheckpointFiles.StatusDump, JsonSerializer.SerializeToUtf8Bytes(status, CheckpointJson.Default.StatusDump), ct).ConfigureAwait(false);

        if (diff.Deleted.Count > 0)
        {
            await WriteJsonAsync(work, CheckpointFiles.DeletedFiles, JsonSerializer.SerializeToUtf8Bytes(diff.Deleted.ToList(), CheckpointJson.Default.ListString), ct).ConfigureAwait(false);
        }

        var binds = c.Spec.Mounts.Select(m => new BindMountDump
        {
            Source = m.HostPath,
            Destination = m.ContainerPath,
            FileType = FileKinds.IsDirectory(m.HostPath) ? "directory" : "file",
            Permissions = FileKinds.IsDirectory(m.HostPath) || File.Exists(m.HostPath) ? (uint)File.GetUnixFileMode(m.HostPath) : 0x1ED,
        }).ToList();
        if (binds.Count > 0)
        {
            await WriteJsonAsync(work, CheckpointFiles.BindMounts, JsonSerializer.SerializeToUtf8Bytes(binds, CheckpointJson.Default.ListBindMountDump), ct).ConfigureAwait(false);
        }

        if (logLength > 0 && FileKinds.IsRegularFile(c.LogFile))
        {
            await using var input = new FileStream(FileKinds.OpenReadNoFollow(c.LogFile), FileAccess.Read);
            await using var output = new FileStream(Path.Combine(work, CheckpointFiles.ContainerLog),
                new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite });
            var buffer = new byte[1 << 16];
            var left = Math.Min(logLength, input.Length);
            while (left > 0)
            {
                var n = await input.ReadAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, left)), ct).ConfigureAwait(false);
                if (n == 0)
                {
                    break;
                }

                await output.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                left -= n;
            }
        }
    }

    /// <summary>
    /// Annotations for spec.dump so that every engine's restore finds what it reads: containerd's io.kubernetes.cri.*,
    /// CRI-O's io.kubernetes.cri-o.* (JSON maps of the CRI annotations, labels and metadata) and checkpointctl's manager key.
    /// </summary>
    internal static Dictionary<string, string> EngineAnnotations(ContainerRecord c, SandboxRecord s)
    {
        var metadata = new JsonObject { ["name"] = c.Spec.Name, ["attempt"] = c.Spec.Attempt };
        return new Dictionary<string, string>(StringComparer.Ordinal)
        {
            [CheckpointFiles.ContainerManagerAnnotation] = CheckpointFiles.CrestManager,
            ["io.kubernetes.cri.container-type"] = "container",
            ["io.kubernetes.cri.container-name"] = c.Spec.Name,
            ["io.kubernetes.cri.image-name"] = c.Spec.Image,
            ["io.kubernetes.cri.sandbox-id"] = s.Id,
            ["io.kubernetes.cri.sandbox-name"] = s.Spec.Name,
            ["io.kubernetes.cri.sandbox-namespace"] = s.Spec.Namespace,
            ["io.kubernetes.cri.sandbox-uid"] = s.Spec.Uid,
            ["io.kubernetes.cri-o.Annotations"] = JsonSerializer.Serialize(c.Spec.Annotations.ToDictionary(StringComparer.Ordinal), CheckpointJson.Default.DictionaryStringString),
            ["io.kubernetes.cri-o.Labels"] = JsonSerializer.Serialize(c.Spec.Labels.ToDictionary(StringComparer.Ordinal), CheckpointJson.Default.DictionaryStringString),
            ["io.kubernetes.cri-o.Metadata"] = metadata.ToJsonString(),
            ["io.kubernetes.cri-o.ContainerName"] = $"k8s_{c.Spec.Name}_{s.Spec.Name}_{s.Spec.Namespace}_{s.Spec.Uid}_{c.Spec.Attempt}",
            ["io.kubernetes.cri-o.Name"] = $"k8s_{c.Spec.Name}_{s.Spec.Name}_{s.Spec.Namespace}_{s.Spec.Uid}_{c.Spec.Attempt}",
            ["io.kubernetes.cri-o.SandboxID"] = s.Id,
            ["io.kubernetes.cri-o.SandboxName"] = $"k8s_{s.Spec.Name}_{s.Spec.Namespace}_{s.Spec.Uid}_{s.Spec.Attempt}",
            ["io.kubernetes.cri-o.ImageName"] = c.Spec.Image,
            ["io.kubernetes.cri-o.ImageRef"] = c.ImageId,
            ["io.kubernetes.cri-o.ImageRepoDigests"] = c.ImageRef.Contains('@', StringComparison.Ordinal) ? c.ImageRef : "",
            ["io.kubernetes.cri-o.LogPath"] = c.LogFile,
            ["io.kubernetes.pod.name"] = s.Spec.Name,
            ["io.kubernetes.pod.namespace"] = s.Spec.Namespace,
        };
    }

    private static DumpStatistics? ReadStats(string path)
    {
        try
        {
            return File.Exists(path) ? CriuStats.ParseDump(File.ReadAllBytes(path), path) : null;
        }
        catch (CrestException)
        {
            return null;
        }
    }

    /// <summary>Writes the archive to a new 0600 file beside <paramref name="target"/>, then renames it over the target.</summary>
    private static async Task<long> WriteArchiveAsync(string work, string target, ArchiveCompression compression, CancellationToken ct)
    {
        var temp = Path.Combine(Path.GetDirectoryName(target)!, $".{Path.GetFileName(target)}.{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6))}.crest-partial");
        try
        {
            long bytes;
            await using (var output = new FileStream(temp, new FileStreamOptions
            {
                Mode = FileMode.CreateNew, // O_CREAT|O_EXCL: never through a link planted at the temporary name
                Access = FileAccess.Write,
                UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
                BufferSize = 1 << 20,
            }))
            {
                await CheckpointArchive.WriteAsync(work, output, compression, ct).ConfigureAwait(false);
                await output.FlushAsync(ct).ConfigureAwait(false);
                output.Flush(flushToDisk: true);
                bytes = output.Length;
            }

            File.Move(temp, target, overwrite: true);
            return bytes;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CrestException(ErrorKind.ResourceExhausted, $"writing the checkpoint archive {target} failed: {e.Message}; nothing was left at {target} and the container keeps running", e);
        }
        finally
        {
            if (File.Exists(temp))
            {
                File.Delete(temp);
            }
        }
    }

    private static async Task WriteJsonAsync(string dir, string name, byte[] json, CancellationToken ct)
    {
        await using var f = new FileStream(Path.Combine(dir, name), new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite });
        await f.WriteAsync(json, ct).ConfigureAwait(false);
    }

    private static long UnixNanoseconds(DateTimeOffset t) => (t - DateTimeOffset.UnixEpoch).Ticks * 100;

    private static void RemoveFresh(string path)
    {
        if (FileKinds.IsSymlink(path) || File.Exists(path))
        {
            File.Delete(path);
        }
        else if (Directory.Exists(path))
        {
            Directory.Delete(path, recursive: true);
        }
    }
}
