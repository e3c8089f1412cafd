using System.CommandLine;
using System.Formats.Tar;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Crest.Checkpoint.Format;
using Crest.Cli.Output;
using Crest.Core;
using Crest.Cri.Mapping;
using Runtime.V1;

namespace Crest.Cli.Commands;

/// <summary>
/// The pod verbs of KEP-5823: <c>crest checkpoint pod</c> (CheckpointPod into a directory, then optionally one tar or a
/// pod checkpoint OCI image) and <c>crest restore pod</c> (RestorePod from any of the three). The forms are described
/// in docs/pod-checkpoint-format.md, "Single-file and image forms".
/// </summary>
internal static class PodCheckpointCommands
{
    /// <summary>The largest pod.json the CLI reads (the format's cap).</summary>
    private const int MaxManifestBytes = 4 << 20;

    /// <summary><c>crest checkpoint pod POD --dir DIR | --export FILE | --image NAME [--push]</c>.</summary>
    public static Command Checkpoint(GlobalOptions global, TextWriter output)
    {
        var pod = new Argument<string>("pod-id") { Description = "the pod sandbox to checkpoint (its full ID)" };
        var dir = new Option<string?>("--dir", "--output-dir") { Description = "the checkpoint directory crestd writes (new, or existing and empty)" };
        var export = new Option<string?>("--export", "-e") { Description = "write the pod checkpoint as one uncompressed tar FILE" };
        var image = new Option<string?>("--image") { Description = "build a pod checkpoint OCI image NAME[:TAG] in the runtime's image store" };
        var push = new Option<bool>("--push") { Description = "push the --image to its registry" };
        var containers = new Option<string[]>("--container") { Description = "a container ID to include (repeatable; default: every running container of the pod)" };
        var stop = new Option<bool>("--stop") { Description = "leave the pod's containers stopped after the checkpoint (post_checkpoint_state STOPPED)" };
        var options = new Option<string[]>("--option") { Description = "a CheckpointPod option KEY=VALUE (repeatable)" };
        var command = new Command("pod", "Checkpoint a pod's running containers at one instant (CheckpointPod) into a directory, a tar or an OCI image")
        {
            pod, dir, export, image, push, containers, stop, options,
        };
        command.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            var (dirPath, exportPath, imageName) = (parse.GetValue(dir), parse.GetValue(export), parse.GetValue(image));
            if (new[] { dirPath, exportPath, imageName }.Count(v => v is not null) != 1)
            {
                throw new CliUsageException("checkpoint pod needs exactly one of --dir DIR, --export FILE or --image NAME");
            }

            if (parse.GetValue(push) && imageName is null)
            {
                throw new CliUsageException("--push pushes the --image; give --image NAME");
            }

            var request = new CheckpointPodRequest
            {
                PodSandboxId = parse.GetValue(pod)!,
                PostCheckpointState = parse.GetValue(stop) ? PostCheckpointState.PostCheckpointStopped : PostCheckpointState.PostCheckpointRunning,
            };
            request.ContainerIds.Add(parse.GetValue(containers) ?? []);
            request.Options.Add(ParseOptions(parse.GetValue(options)));

            // The directory crestd writes: the one asked for, or a fresh one beside the export (so the rename stays on
            // one file system) or in the temp directory for an image.
            var target = dirPath is not null ? Path.GetFullPath(dirPath)
                : exportPath is not null ? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(exportPath))!, $".{Path.GetFileName(exportPath)}.crest-{Guid.NewGuid():N}")
                : Path.Combine(Path.GetTempPath(), $"crest-pod-checkpoint-{Guid.NewGuid():N}");
            request.OutputPath = target;
            var progress = CliRunner.Error;
            try
            {
                await progress.WriteLineAsync($"Checkpointing pod {request.PodSandboxId} into {target}");
                using (var connection = new CriConnection(ctx.RuntimeEndpoint, parse.GetValue(global.Timeout) is null ? TimeSpan.FromMinutes(10) : ctx.Timeout))
                {
                    await CliRunner.CallAsync<bool>(connection, "runtime.v1.RuntimeService/CheckpointPod", async o =>
                    {
                        await new RuntimeService.RuntimeServiceClient(connection.Channel).CheckpointPodAsync(request, o);
                        return true;
                    }, ct);
                }

                PodCheckpointManifest? manifest = null;
                try
                {
                    manifest = await ReadManifestAsync(target, ct);
                }
                catch (UnauthorizedAccessException)
                {
                    // crestd's 0700 directory, checkpointed for a user who may not look inside: no names to show.
                }

                var names = manifest?.Containers.Select(c => c.Name).ToList() ?? [];
                string result;
                long bytes;
                string? imageId = null;
                string? digest = null;
                if (exportPath is not null)
                {
                    result = Path.GetFullPath(exportPath);
                    await progress.WriteLineAsync($"Writing {result}");
                    bytes = await ExportAsync(target, result, ct);
                }
                else if (imageName is not null)
                {
                    var tar = target + ".tar";
                    try
                    {
                        await progress.WriteLineAsync($"Building pod checkpoint image {imageName}");
                        bytes = await ExportAsync(target, tar, ct);
                        var annotations = PodCheckpointFiles.ImageAnnotations(names);
                        if (parse.GetValue(push))
                        {
                            await progress.WriteLineAsync($"Pushing {imageName}");
                        }

                        (imageId, digest) = await CheckpointImageImport.ImportAsync(parse, global, progress, tar, imageName, annotations, parse.GetValue(push), ct);
                    }
                    finally
                    {
                        File.Delete(tar);
                    }

                    result = imageName;
                }
                else
                {
                    result = target;
                    bytes = DirectoryBytes(target);
                }

                if (ctx.Format == OutputFormat.Json)
                {
                    var doc = new JsonObject
                    {
                        ["path"] = result,
                        ["containers"] = new JsonArray([.. names.Select(n => (JsonNode)n)]),
                        ["bytes"] = bytes,
                    };
                    if (imageId is not null)
                    {
                        doc["imageId"] = imageId;
                    }

                    if (digest is not null)
                    {
                        doc["manifestDigest"] = digest;
                    }

                    await ctx.Out.WriteLineAsync(doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                }
                else
                {
                    await ctx.Out.WriteLineAsync(digest is null ? result : $"{result}@{digest}");
                }
            }
            finally
            {
                if (dirPath is null && Directory.Exists(target))
                {
                    Directory.Delete(target, recursive: true);
                }
            }
        }));
        return command;
    }

    /// <summary><c>crest restore pod CHECKPOINT --config pod.json [--container c.json ...] [--start]</c>.</summary>
    public static Command Restore(GlobalOptions global, TextWriter output)
    {
        var source = new Argument<string>("checkpoint")
        {
            Description = "a pod checkpoint directory, an exported pod checkpoint tar, or a pod checkpoint image present in the runtime",
        };
        var config = new Option<string>("--config") { Description = "the new pod's config (crictl JSON/YAML PodSandboxConfig)", Required = true };
        var containers = new Option<string[]>("--container")
        {
            Description = "a container config (crictl JSON/YAML), one per checkpointed container, matched by metadata name (repeatable). "
                + "Default: the configs recorded in the checkpoint's pod.json; required for an image, whose pod.json only crestd reads",
        };
        var runtime = new Option<string?>("--runtime") { Description = "the runtime handler for the new pod (default: the runtime's default)" };
        var start = new Option<bool>("--start") { Description = "start every restored container (StartContainer, in the checkpoint's order)" };
        var command = new Command("pod", "Restore a pod checkpoint into a new pod (RestorePod); prints the new pod's ID") { source, config, containers, runtime, start };
        command.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            var checkpoint = parse.GetValue(source)!;
            var isPath = Directory.Exists(checkpoint) || File.Exists(checkpoint);
            if (isPath)
            {
                checkpoint = Path.GetFullPath(checkpoint);
            }

            var request = new RestorePodRequest
            {
                CheckpointPath = checkpoint,
                Config = PodCommands.ReadConfig<PodSandboxConfig>(parse.GetValue(config)!),
                RuntimeHandler = parse.GetValue(runtime) ?? "",
            };
            if (parse.GetValue(containers) is { Length: > 0 } paths)
            {
                request.ContainerConfigs.Add(paths.Select(PodCommands.ReadConfig<ContainerConfig>));
            }
            else if (!isPath)
            {
                throw new CliUsageException($"{checkpoint} is not a file or directory here, so it is taken as a pod checkpoint image; give one --container config per checkpointed container");
            }
            else
            {
                var manifest = await ReadManifestAsync(checkpoint, ct)
                    ?? throw new CliFailure(ExitCodes.RuntimeError, $"{checkpoint} is not a pod checkpoint: it holds no {PodCheckpointFiles.Manifest}");
                request.ContainerConfigs.Add(manifest.Containers.Select(c => CriMapping.ToCri(c.Spec)));
            }

            using var connection = new CriConnection(ctx.RuntimeEndpoint, parse.GetValue(global.Timeout) is null ? TimeSpan.FromMinutes(10) : ctx.Timeout);
            var client = new RuntimeService.RuntimeServiceClient(connection.Channel);
            await CliRunner.Error.WriteLineAsync($"Restoring pod checkpoint {checkpoint}");
            var restored = await CliRunner.CallAsync(connection, "runtime.v1.RuntimeService/RestorePod",
                async o => await client.RestorePodAsync(request, o), ct);
            if (parse.GetValue(start))
            {
                foreach (var c in restored.RestoredContainers)
                {
                    await CliRunner.Error.WriteLineAsync($"Starting {c.Name} {c.ContainerId}");
                    await CliRunner.CallAsync<bool>(connection, "runtime.v1.RuntimeService/StartContainer", async o =>
                    {
                        await client.StartContainerAsync(new StartContainerRequest { ContainerId = c.ContainerId }, o);
                        return true;
                    }, ct);
                }
            }

            if (ctx.Format == OutputFormat.Json)
            {
                var doc = new JsonObject
                {
                    ["podSandboxId"] = restored.PodSandboxId,
                    ["containers"] = new JsonArray([.. restored.RestoredContainers.Select(c => (JsonNode)new JsonObject { ["name"] = c.Name, ["containerId"] = c.ContainerId })]),
                };
                await ctx.Out.WriteLineAsync(doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            }
            else
            {
                await ctx.Out.WriteLineAsync(restored.PodSandboxId);
            }
        }));
        return command;
    }

    /// <summary>KEY=VALUE pairs as an options map; an empty key, a missing '=' or a key given twice is a usage error.</summary>
    internal static Dictionary<string, string> ParseOptions(IEnumerable<string>? pairs)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var pair in pairs ?? [])
        {
            var eq = pair.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0)
            {
                throw new CliUsageException($"--option \"{pair}\" is not KEY=VALUE");
            }

            if (!result.TryAdd(pair[..eq], pair[(eq + 1)..]))
            {
                throw new CliUsageException($"--option {pair[..eq]} is given twice");
            }
        }

        return result;
    }

    /// <summary>
    /// The manifest of a pod checkpoint directory or exported tar, or null when <paramref name="source"/> is neither (a
    /// container checkpoint archive, an image reference). A pod checkpoint that fails its checks is an error.
    /// </summary>
    internal static async Task<PodCheckpointManifest?> ReadManifestIfPodAsync(string source, CancellationToken ct)
    {
        try
        {
            return await ReadManifestAsync(source, ct);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new CliFailure(ExitCodes.RuntimeError, $"cannot read {source}: {e.Message}");
        }
    }

    private static async Task<PodCheckpointManifest?> ReadManifestAsync(string source, CancellationToken ct)
    {
        try
        {
            if (Directory.Exists(source))
            {
                return PodCheckpointManifests.IsPodCheckpoint(source) ? await PodCheckpointManifests.ReadAsync(source, MaxManifestBytes, ct) : null;
            }

            return File.Exists(source) && await ReadTarManifestAsync(source, ct) is { } bytes ? PodCheckpointManifests.Parse(bytes, null) : null;
        }
        catch (CrestException e)
        {
            throw new CliFailure(ExitCodes.RuntimeError, e.Message);
        }
    }

    /// <summary>pod.json's bytes from a tar (plain, gzip or zstd): a top-level regular file of at most the format's cap.</summary>
    internal static async Task<byte[]?> ReadTarManifestAsync(string path, CancellationToken ct)
    {
        await using var file = File.OpenRead(path);
        try
        {
            await using var plain = CheckpointArchive.OpenRead(file);
            await using var tar = new TarReader(plain);
            while (await tar.GetNextEntryAsync(copyData: false, ct) is { } entry)
            {
                if (entry.Name.TrimStart('.', '/') != PodCheckpointFiles.Manifest || entry.Name.Contains("..", StringComparison.Ordinal))
                {
                    continue;
                }

                if (entry.EntryType is not (TarEntryType.RegularFile or TarEntryType.V7RegularFile) || entry.Length > MaxManifestBytes || entry.DataStream is null)
                {
                    throw new CliFailure(ExitCodes.RuntimeError, $"{path}: {PodCheckpointFiles.Manifest} is not a regular file of at most {MaxManifestBytes} bytes");
                }

                var bytes = new byte[entry.Length];
                await entry.DataStream.ReadExactlyAsync(bytes, ct);
                return bytes;
            }
        }
        catch (Exception e) when (e is InvalidDataException or FormatException)
        {
            // Not a tar at all: not a pod checkpoint.
            return null;
        }

        return null;
    }

    /// <summary>Writes <paramref name="dir"/> as one uncompressed tar to <paramref name="file"/> (a temp name, then a rename); returns its size.</summary>
    private static async Task<long> ExportAsync(string dir, string file, CancellationToken ct)
    {
        var temp = file + ".crest-writing";
        try
        {
            await using (var stream = new FileStream(temp, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
            {
                await CheckpointArchive.WriteAsync(dir, stream, ArchiveCompression.None, ct);
                stream.Flush(flushToDisk: true);
            }

            File.Move(temp, file, overwrite: true);
        }
        catch (CrestException e)
        {
            throw new CliFailure(ExitCodes.RuntimeError, e.Message);
        }
        finally
        {
            File.Delete(temp);
        }

        return new FileInfo(file).Length;
    }

    private static long DirectoryBytes(string dir)
    {
        try
        {
            return new DirectoryInfo(dir).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length);
        }
        catch (UnauthorizedAccessException)
        {
            return 0; // crestd's 0700 directory, read by a user who may not look inside
        }
    }

    /// <summary><c>crest checkpoint inspect</c> on a pod checkpoint: the manifest, as a table or JSON.</summary>
    internal static async Task WriteInspectAsync(CliContext ctx, string source, PodCheckpointManifest m)
    {
        if (ctx.Format == OutputFormat.Json)
        {
            var doc = new JsonObject
            {
                ["kind"] = m.Kind,
                ["formatVersion"] = m.FormatVersion,
                ["engine"] = m.Engine,
                ["engineVersion"] = m.EngineVersion,
                ["pod"] = m.Pod.Name,
                ["namespace"] = m.Pod.Namespace,
                ["uid"] = m.Pod.Uid,
                ["sandboxId"] = m.SandboxId,
                ["runtimeHandler"] = m.RuntimeHandler,
                ["checkpointedAt"] = m.CheckpointedAt.UtcDateTime.ToString("O", CultureInfo.InvariantCulture),
                ["frozenMilliseconds"] = m.FrozenMilliseconds,
                ["tcpEstablished"] = m.TcpEstablished,
                ["postCheckpointState"] = m.PostCheckpointState,
                ["ips"] = new JsonArray([.. m.Ips.Select(i => (JsonNode)i)]),
                ["containers"] = new JsonArray([.. m.Containers.Select(c => (JsonNode)new JsonObject
                {
                    ["name"] = c.Name,
                    ["id"] = c.Id,
                    ["image"] = c.Image,
                    ["imageRef"] = c.ImageRef,
                    ["archive"] = PodCheckpointFiles.ContainerArchive(c.Name),
                    ["archiveBytes"] = c.ArchiveBytes,
                })]),
                ["shared"] = new JsonObject
                {
                    ["devShm"] = m.Shared.DevShm,
                    ["devShmBytes"] = m.Shared.DevShmBytes,
                    ["sysVShm"] = m.Shared.SysVShm,
                    ["sysVShmSegments"] = m.Shared.SysVShmSegments,
                    ["sysVShmBytes"] = m.Shared.SysVShmBytes,
                    ["hostname"] = m.Shared.Hostname,
                },
            };
            await ctx.Out.WriteLineAsync(doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return;
        }

        await ctx.Out.WriteLineAsync($"Pod checkpoint:  {source} (format {m.FormatVersion}, {m.Engine} {m.EngineVersion})");
        await ctx.Out.WriteLineAsync($"Pod:             {m.Pod.Namespace}/{m.Pod.Name} (sandbox {m.SandboxId}, handler {(m.RuntimeHandler.Length == 0 ? "default" : m.RuntimeHandler)})");
        await ctx.Out.WriteLineAsync($"Checkpointed:    {m.CheckpointedAt.UtcDateTime:O}, left {m.PostCheckpointState}");
        await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"Frozen:          {m.FrozenMilliseconds} ms{(m.TcpEstablished ? "; established TCP connections dumped" : "")}"));
        await ctx.Out.WriteLineAsync($"Addresses:       {(m.Ips.Count == 0 ? "none" : string.Join(", ", m.Ips))}");
        await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture,
            $"Shared state:    /dev/shm {(m.Shared.DevShm ? $"{m.Shared.DevShmBytes} bytes" : "not saved")}; System V shm {(m.Shared.SysVShm ? $"{m.Shared.SysVShmSegments} segment(s), {m.Shared.SysVShmBytes} bytes" : "none")}; hostname {m.Shared.Hostname}"));
        await ctx.Out.WriteLineAsync();
        await ctx.Out.WriteLineAsync($"{"CONTAINER",-20} {"ID",-14} {"ARCHIVE BYTES",14}  IMAGE");
        foreach (var c in m.Containers)
        {
            await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"{c.Name,-20} {c.Id[..Math.Min(13, c.Id.Length)],-14} {c.ArchiveBytes,14}  {c.Image}"));
        }
    }
}
