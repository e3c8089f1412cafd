using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Linux;
using Crest.Runtime;

namespace Crest.Checkpoint;

/// <summary>
/// The files of one container checkpoint (config.dump, spec.dump, status.dump, bind.mounts, deleted.files, the log copy)
/// and its archive, written after the container was resumed: shared by CheckpointContainer and CheckpointPod, so a pod
/// checkpoint's container parts are the same archives.
/// </summary>
internal static class ContainerCheckpointWriter
{
    /// <summary>The container's OCI spec (its bundle's config.json) as JSON, to be written as spec.dump.</summary>
    internal static async Task<JsonObject> ReadSpecAsync(RuntimeLayout layout, string id, CancellationToken ct)
    {
        var path = layout.Container(id).ConfigJson;
        return JsonNode.Parse(await File.ReadAllBytesAsync(path, ct).ConfigureAwait(false)) as JsonObject
            ?? throw new CrestException(ErrorKind.Internal, $"container {id}: {path} is not a JSON object");
    }

    /// <summary>
    /// The rootfs diff, written while the container is frozen: the whole upper directory, or with <paramref name="delta"/>
    /// (a migration whose rootfs rounds are staged on the target) only what changed since the last round began, with
    /// every deletion as of now.
    /// </summary>
    internal static async Task<RootfsDiffSummary> WriteRootfsAsync(string upper, Stream output, IReadOnlyCollection<string> excluded, RootfsDelta? delta, CancellationToken ct)
    {
        if (delta is null)
        {
            return await RootfsDiff.WriteAsync(upper, output, excluded, ct).ConfigureAwait(false);
        }

        var round = await RootfsRounds.WriteAsync(upper, output, excluded, delta.Baseline, final: true, ct).ConfigureAwait(false);
        return new RootfsDiffSummary(round.Entries, round.Bytes, round.Deleted);
    }

    /// <summary>Marks a checkpoint as a delta on staged rounds: crest-rootfs-rounds.json names each round by its SHA-256.</summary>
    internal static Task WriteRootfsRoundsAsync(string work, RootfsDelta delta, CancellationToken ct) =>
        File.WriteAllBytesAsync(Path.Combine(work, CheckpointFiles.RootfsRounds),
            JsonSerializer.SerializeToUtf8Bytes(new RootfsRoundsRecord { Rounds = [.. delta.Rounds] }, CheckpointJson.Default.RootfsRoundsRecord), ct);

    internal static List<string> MountDestinations(JsonObject spec) =>
        (spec["mounts"] as JsonArray ?? []).Select(m => m?["destination"]?.GetValue<string>()).OfType<string>().ToList();

    internal static async Task WriteMetadataAsync(string work, ContainerService.ContainerDump dump, JsonObject spec, RootfsDiffSummary diff, long logLength, DateTimeOffset checkpointedAt, CancellationToken ct)
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

        await WriteJsonAsync(work, CheckpointFiles.SpecDump, Encoding.UTF8.GetBytes(spec.ToJsonString()), ct).ConfigureAwait(false);

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

    internal static DumpStatistics? ReadStats(string path)
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

    /// <summary>
    /// Writes the archive to a new 0600 file beside <paramref name="target"/>, then renames it over the target. With
    /// <paramref name="partialRecord"/>, the temporary file's path is written there first and the record removed at the
    /// end, so that a crestd killed in between finds and removes the temporary file when it starts again
    /// (<see cref="ContainerService.RecoverAsync"/>).
    /// </summary>
    /// <summary>The archive of a held work directory, written into <paramref name="output"/> as it is made (uncompressed).</summary>
    internal static Task StreamArchiveAsync(string work, Stream output, CancellationToken ct) =>
        CheckpointArchive.WriteAsync(work, output, ArchiveCompression.None, ct);

    internal static async Task<long> WriteArchiveAsync(string work, string target, ArchiveCompression compression, CancellationToken ct, string? partialRecord = null)
    {
        var temp = Path.Combine(Path.GetDirectoryName(target)!, $".{Path.GetFileName(target)}.{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6))}{ContainerService.PartialArchiveSuffix}");
        try
        {
            if (partialRecord is not null)
            {
                await File.WriteAllTextAsync(partialRecord, temp, ct).ConfigureAwait(false);
            }

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
                CrashPoints.Hit(CrashPoints.CheckpointArchiveWriting);
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

            if (partialRecord is not null && File.Exists(partialRecord))
            {
                File.Delete(partialRecord);
            }
        }
    }

    private static async Task WriteJsonAsync(string dir, string name, byte[] json, CancellationToken ct)
    {
        await using var f = new FileStream(Path.Combine(dir, name), new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite });
        await f.WriteAsync(json, ct).ConfigureAwait(false);
    }

    private static long UnixNanoseconds(DateTimeOffset t) => (t - DateTimeOffset.UnixEpoch).Ticks * 100;

    internal static void RemoveFresh(string path) => FileKinds.Remove(path);
}
