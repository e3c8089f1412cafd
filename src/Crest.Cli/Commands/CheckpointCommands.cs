using System.CommandLine;
using System.Globalization;
using System.IO.Compression;
using System.Text.Json;
using Crest.Checkpoint.Format;
using Crest.Cli.Output;
using Crest.Core;
using Crest.Cri.Mapping;
using Crest.Images;
using Crest.Api.V1;
using Runtime.V1;

namespace Crest.Cli.Commands;

/// <summary>
/// crictl's <c>checkpoint --export</c>, plus what crictl lacks: compression, CRIU statistics, and checkpoint OCI images
/// built, stored and pushed without buildah. The archive work happens here, after the CRI call, so it works against
/// any CRI runtime on the node (containerd too).
/// </summary>
internal static class CheckpointCommands
{
    public static IEnumerable<Command> Create(GlobalOptions global, TextWriter output)
    {
        var id = new Argument<string>("container-id");
        var export = new Option<string?>("--export", "-e") { Description = "path of the checkpoint archive to write" };
        var compress = new Option<string?>("--compress") { Description = "compress the archive: none, gzip or zstd (readers detect it)" };
        var stats = new Option<bool>("--stats") { Description = "print CRIU's statistics (freezing, frozen, memdump, memwrite times; pages)" };
        var image = new Option<string?>("--image") { Description = "also build a checkpoint OCI image NAME[:TAG] in the runtime's image store" };
        var push = new Option<bool>("--push") { Description = "push the checkpoint image to its registry" };
        var deadline = new Option<long>("--timeout-seconds")
        {
            Description = "CheckpointContainer's timeout: the runtime's deadline for the whole checkpoint (a value below the runtime's default is raised to it)",
        };
        var checkpoint = new Command("checkpoint", "Checkpoint a running container into an archive (it keeps running)") { id, export, compress, stats, image, push, deadline };
        checkpoint.Subcommands.Add(Inspect(global, output));
        checkpoint.Subcommands.Add(PodCheckpointCommands.Checkpoint(global, output));
        checkpoint.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            var imageName = parse.GetValue(image);
            var exportPath = parse.GetValue(export);
            var temporary = false;
            if (exportPath is null)
            {
                if (imageName is null)
                {
                    throw new CliUsageException("checkpoint needs --export FILE (the archive to write) or --image NAME");
                }

                exportPath = Path.Combine(Path.GetTempPath(), $"crest-checkpoint-{Guid.NewGuid():N}.tar");
                temporary = true;
            }

            var location = Path.GetFullPath(exportPath);
            var compression = ParseCompression(parse.GetValue(compress));
            try
            {
                var runtimeTimeout = Math.Max(0, parse.GetValue(deadline));
                var clientDeadline = TimeSpan.FromMinutes(10) + TimeSpan.FromSeconds(runtimeTimeout);
                using (var connection = new CriConnection(ctx.RuntimeEndpoint, parse.GetValue(global.Timeout) is null ? clientDeadline : ctx.Timeout))
                {
                    await CliRunner.CallAsync<bool>(connection, "runtime.v1.RuntimeService/CheckpointContainer", async o =>
                    {
                        await new RuntimeService.RuntimeServiceClient(connection.Channel).CheckpointContainerAsync(
                            new CheckpointContainerRequest { ContainerId = parse.GetValue(id)!, Location = location, Timeout = runtimeTimeout }, o);
                        return true;
                    }, ct);
                }

                if (compression != ArchiveCompression.None)
                {
                    await CompressInPlaceAsync(location, compression, ct);
                }

                if (!temporary)
                {
                    await output.WriteLineAsync(location);
                }

                if (parse.GetValue(stats))
                {
                    await PrintStatsAsync(location, ctx, ct);
                }

                if (imageName is not null)
                {
                    await BuildImageAsync(parse, global, output, location, imageName, parse.GetValue(push), ct);
                }
            }
            finally
            {
                if (temporary && File.Exists(location))
                {
                    File.Delete(location);
                }
            }
        }));
        yield return checkpoint;

        var archive = new Argument<string>("archive");
        var name = new Argument<string>("name");
        var imagePush = new Option<bool>("--push") { Description = "push the image to its registry" };
        var checkpointImage = new Command("checkpoint-image", "Build a checkpoint OCI image from an archive (no buildah): one layer holding the archive's files at /") { archive, name, imagePush };
        checkpointImage.SetAction((parse, ct) => CliRunner.RunAsync(() =>
            BuildImageAsync(parse, global, output, Path.GetFullPath(parse.GetValue(archive)!), parse.GetValue(name)!, parse.GetValue(imagePush), ct)));
        yield return checkpointImage;
        yield return Restore(global, output);
    }

    /// <summary>
    /// <c>crest restore ARCHIVE|IMAGE --pod POD</c>: CRI CreateContainer with the checkpoint as the image (an archive
    /// path made absolute, or a checkpoint image reference), then StartContainer; prints the new container's ID.
    /// The container config is <c>--config</c> (crictl JSON/YAML, its image replaced) or a minimal one.
    /// </summary>
    private static Command Restore(GlobalOptions global, TextWriter output)
    {
        var source = new Argument<string>("archive-or-image") { Description = "a checkpoint archive file, or a checkpoint image present in the runtime" };
        var pod = new Option<string>("--pod", "-p") { Description = "the pod sandbox ID to restore into", Required = true };
        var name = new Option<string?>("--name") { Description = "the container's name (default: the --config's, else the checkpointed container's, else \"restored\")" };
        var config = new Option<string?>("--config") { Description = "a container config (crictl JSON/YAML) for mounts, security context and log path; its image is replaced" };
        var pid = new Option<string?>("--pid") { Description = "pid namespace: pod (shared, the CRI default) or container (private, as the kubelet and Podman use); must match the checkpoint" };
        var noStart = new Option<bool>("--no-start") { Description = "only create the container (crictl create), do not start it" };
        var restore = new Command("restore", "Restore a checkpoint into a pod: CreateContainer with the checkpoint as the image, then StartContainer") { source, pod, name, config, pid, noStart };
        restore.Subcommands.Add(PodCheckpointCommands.Restore(global, output));
        restore.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            var image = parse.GetValue(source)!;
            string? defaultName = null;
            if (File.Exists(image))
            {
                image = Path.GetFullPath(image);
                var metadata = await ReadArchiveAsync(image, ct);
                defaultName = metadata.SpecAnnotations.GetValueOrDefault("io.kubernetes.cri.container-name");
            }

            var container = parse.GetValue(config) is { } configPath ? PodCommands.ReadConfig<ContainerConfig>(configPath) : new ContainerConfig();
            var containerName = parse.GetValue(name) ?? (container.Metadata?.Name is { Length: > 0 } n ? n : null) ?? defaultName ?? "restored";
            container.Metadata = new ContainerMetadata { Name = containerName, Attempt = container.Metadata?.Attempt ?? 0 };
            container.Image = new ImageSpec { Image = image };
            if (string.IsNullOrEmpty(container.LogPath))
            {
                container.LogPath = containerName + ".log";
            }

            container.Linux ??= new LinuxContainerConfig();
            if (parse.GetValue(pid) is { } mode)
            {
                container.Linux.SecurityContext ??= new LinuxContainerSecurityContext();
                container.Linux.SecurityContext.NamespaceOptions ??= new NamespaceOption();
                container.Linux.SecurityContext.NamespaceOptions.Pid = mode.ToLowerInvariant() switch
                {
                    "pod" => global::Runtime.V1.NamespaceMode.Pod,
                    "container" => global::Runtime.V1.NamespaceMode.Container,
                    _ => throw new CliUsageException($"--pid {mode}: expected pod or container"),
                };
            }

            using var connection = new CriConnection(ctx.RuntimeEndpoint, parse.GetValue(global.Timeout) is null ? TimeSpan.FromMinutes(10) : ctx.Timeout);
            var client = new RuntimeService.RuntimeServiceClient(connection.Channel);
            var podId = parse.GetValue(pod)!;
            var status = await CliRunner.CallAsync(connection, "runtime.v1.RuntimeService/PodSandboxStatus",
                async o => await client.PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = podId }, o), ct);
            var sandboxConfig = new PodSandboxConfig { Metadata = status.Status.Metadata };
            sandboxConfig.Labels.Add(status.Status.Labels);
            sandboxConfig.Annotations.Add(status.Status.Annotations);
            var created = await CliRunner.CallAsync(connection, "runtime.v1.RuntimeService/CreateContainer",
                async o => await client.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = status.Status.Id, Config = container, SandboxConfig = sandboxConfig }, o), ct);
            if (!parse.GetValue(noStart))
            {
                await CliRunner.CallAsync(connection, "runtime.v1.RuntimeService/StartContainer",
                    async o => await client.StartContainerAsync(new StartContainerRequest { ContainerId = created.ContainerId }, o), ct);
            }

            await output.WriteLineAsync(created.ContainerId);
        }));
        return restore;
    }

    /// <summary>
    /// <c>crest checkpoint inspect ARCHIVE [--config container.json]</c>: what a restore would put back (processes,
    /// users, capabilities, seccomp, sizes, engine, base image) and, given a container config, the policy verdict.
    /// Reads the archive locally through the same safe extractor crestd uses; no daemon is needed.
    /// </summary>
    private static Command Inspect(GlobalOptions global, TextWriter output)
    {
        var archive = new Argument<string>("archive-or-image") { Description = "a checkpoint archive file, or a checkpoint image reference read from its registry" };
        var config = new Option<string?>("--config") { Description = "a container config (crictl JSON/YAML): show whether Crest would allow restoring with it" };
        var inspect = new Command("inspect", "Show what restoring a checkpoint archive or checkpoint image would grant, and whether a container config allows it") { archive, config };
        inspect.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            var source = parse.GetValue(archive)!;
            if (await PodCheckpointCommands.ReadManifestIfPodAsync(source, ct) is { } pod)
            {
                await PodCheckpointCommands.WriteInspectAsync(ctx, source, pod);
                return;
            }

            var path = File.Exists(source) ? Path.GetFullPath(source) : null;
            var staging = Directory.CreateTempSubdirectory("crest-inspect-");
            var planDir = staging.FullName;
            try
            {
                RestorePlan plan;
                PolicyAssessment assessment;
                var configPath = parse.GetValue(config);
                var request = configPath is null ? new ContainerSpec { Name = "", Image = "" } : CriMapping.ToRestoreRequest(PodCommands.ReadConfig<ContainerConfig>(configPath));
                try
                {
                    // Inspection unpacks into a temporary directory: its disk keeps the reserve, as a restore's does.
                    var limits = new RestoreLimits { TargetFilesystem = staging.FullName };
                    if (path is not null)
                    {
                        plan = await new CheckpointReader(limits).ReadArchiveAsync(path, staging.FullName, ct);
                    }
                    else
                    {
                        // Not a file: a checkpoint image, read from its registry (loopback registries over plain HTTP).
                        var layers = staging.CreateSubdirectory("layers");
                        var images = staging.CreateSubdirectory("images");
                        using var http = new HttpClient { Timeout = ctx.Timeout > TimeSpan.FromMinutes(5) ? ctx.Timeout : TimeSpan.FromMinutes(5) };
                        plan = await RemoteCheckpointImage.ReadAsync(new RegistryClient(RegistryOptions.Empty, http), source, layers.FullName, images.FullName, limits, ct);
                        planDir = images.FullName;
                    }

                    assessment = RestorePolicy.Assess(Path.Combine(planDir, CheckpointFiles.CriuImages), request, limits.MaxRootfsDiffBytes);
                }
                catch (Exception e) when (e is CrestException or IOException)
                {
                    throw new CliFailure(ExitCodes.RuntimeError, e.Message);
                }

                var verdict = configPath is null ? null : assessment.Violations;
                var commandLines = new Dictionary<uint, IReadOnlyList<string>?>();
                foreach (var pid in assessment.Threads.Select(t => t.Pid).Distinct())
                {
                    try
                    {
                        commandLines[pid] = CriuImages.ReadCommandLine(Path.Combine(planDir, CheckpointFiles.CriuImages), pid);
                    }
                    catch (Exception e) when (e is CrestException or IOException)
                    {
                        throw new CliFailure(ExitCodes.RuntimeError, e.Message);
                    }
                }

                await WriteInspectAsync(ctx, plan, assessment, commandLines, verdict);
                if (verdict is { Count: > 0 })
                {
                    throw new CliFailure(ExitCodes.RuntimeError, $"Crest would refuse this restore: {verdict.Count} violation(s)");
                }
            }
            finally
            {
                staging.Delete(recursive: true);
            }
        }));
        return inspect;
    }

    private static async Task WriteInspectAsync(CliContext ctx, RestorePlan plan, PolicyAssessment assessment, IReadOnlyDictionary<uint, IReadOnlyList<string>?> commandLines, IReadOnlyList<PolicyViolation>? verdict)
    {
        var threads = assessment.Threads;
        var isolation = assessment.Isolation;
        if (ctx.Format == OutputFormat.Json)
        {
            var doc = new System.Text.Json.Nodes.JsonObject
            {
                ["engine"] = plan.Engine.ToString(),
                ["container"] = plan.OriginalName,
                ["runtime"] = plan.OriginalRuntime,
                ["baseImage"] = plan.BaseImageDigestReference ?? plan.BaseImageId ?? plan.BaseImageName,
                ["baseImageName"] = plan.BaseImageName,
                ["checkpointedAt"] = plan.CheckpointedAt.UtcDateTime.ToString("O", CultureInfo.InvariantCulture),
                ["criuImageBytes"] = plan.CriuImageBytes,
                ["rootfsDiffBytes"] = plan.RootfsDiffBytes,
                ["bindMounts"] = new System.Text.Json.Nodes.JsonArray([.. plan.MountDestinations.Select(d => (System.Text.Json.Nodes.JsonNode)d)]),
                ["processes"] = new System.Text.Json.Nodes.JsonArray([.. threads.Select(t => (System.Text.Json.Nodes.JsonNode)new System.Text.Json.Nodes.JsonObject
                {
                    ["pid"] = t.Pid,
                    ["tid"] = t.Tid,
                    ["command"] = t.Command,
                    ["commandLine"] = commandLines.GetValueOrDefault(t.Pid) is { } argv ? new System.Text.Json.Nodes.JsonArray([.. argv.Select(a => (System.Text.Json.Nodes.JsonNode)a)]) : null,
                    ["uids"] = string.Join("/", t.Uids),
                    ["gids"] = string.Join("/", t.Gids),
                    ["groups"] = string.Join(",", t.Groups),
                    ["effective"] = RestorePolicy.Names(t.Effective),
                    ["permitted"] = RestorePolicy.Names(t.Permitted),
                    ["bounding"] = RestorePolicy.Names(t.Bounding),
                    ["inheritable"] = RestorePolicy.Names(t.Inheritable),
                    ["seccomp"] = t.Seccomp,
                    ["namespaces"] = isolation.Namespaces.TryGetValue(t.Pid, out var ns)
                        ? new System.Text.Json.Nodes.JsonObject([.. ns.Select(kv => KeyValuePair.Create(kv.Key, (System.Text.Json.Nodes.JsonNode?)kv.Value))])
                        : null,
                })]),
                ["userNamespaces"] = new System.Text.Json.Nodes.JsonArray([.. isolation.UserNamespaceImages.Select(u => (System.Text.Json.Nodes.JsonNode)u)]),
                ["mounts"] = new System.Text.Json.Nodes.JsonArray([.. isolation.Mounts.Select(m => (System.Text.Json.Nodes.JsonNode)new System.Text.Json.Nodes.JsonObject
                {
                    ["mountPoint"] = m.MountPoint,
                    ["type"] = m.FsType,
                    ["source"] = m.Source,
                    ["root"] = m.Root,
                    ["external"] = m.External,
                })]),
                ["deviceNodes"] = new System.Text.Json.Nodes.JsonArray([.. isolation.DeviceNodes.Select(d => (System.Text.Json.Nodes.JsonNode)$"{d.Path} {d.Kind} {d.Major}:{d.Minor}")]),
                ["tmpfsBytes"] = isolation.TmpfsBytes,
            };
            if (verdict is not null)
            {
                doc["allowed"] = verdict.Count == 0;
                doc["violations"] = new System.Text.Json.Nodes.JsonArray([.. verdict.Select(v => (System.Text.Json.Nodes.JsonNode)v.ToString())]);
            }

            await ctx.Out.WriteLineAsync(doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return;
        }

        await ctx.Out.WriteLineAsync($"Engine:          {plan.Engine}");
        await ctx.Out.WriteLineAsync($"Container:       {plan.OriginalName}");
        await ctx.Out.WriteLineAsync($"Runtime:         {plan.OriginalRuntime}");
        await ctx.Out.WriteLineAsync($"Base image:      {plan.BaseImageDigestReference ?? plan.BaseImageId ?? plan.BaseImageName} ({plan.BaseImageName})");
        await ctx.Out.WriteLineAsync($"Checkpointed:    {plan.CheckpointedAt.UtcDateTime:O}");
        await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"CRIU images:     {plan.CriuImageBytes} bytes; rootfs diff {plan.RootfsDiffBytes} bytes"));
        await ctx.Out.WriteLineAsync($"Bind mounts:     {(plan.MountDestinations.Count == 0 ? "none" : string.Join(", ", plan.MountDestinations))}");
        await ctx.Out.WriteLineAsync();
        await ctx.Out.WriteLineAsync($"{"PID",-7} {"TID",-7} {"COMMAND",-16} {"UIDS",-16} {"GIDS",-16} {"SECCOMP",-9} EFFECTIVE CAPABILITIES");
        foreach (var t in threads)
        {
            await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture,
                $"{t.Pid,-7} {t.Tid,-7} {t.Command,-16} {string.Join("/", t.Uids),-16} {string.Join("/", t.Gids),-16} {t.Seccomp,-9} {RestorePolicy.Names(t.Effective)}"));
        }

        await ctx.Out.WriteLineAsync();
        await ctx.Out.WriteLineAsync($"{"PID",-7} COMMAND LINE (from the checkpointed memory)");
        foreach (var (pid, argv) in commandLines.OrderBy(kv => kv.Key))
        {
            await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"{pid,-7} {(argv is null ? "(not in this checkpoint)" : string.Join(' ', argv))}"));
        }

        await ctx.Out.WriteLineAsync();
        await ctx.Out.WriteLineAsync($"{"PID",-7} NAMESPACES");
        foreach (var (pid, ns) in isolation.Namespaces.OrderBy(kv => kv.Key))
        {
            await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"{pid,-7} {string.Join(" ", ns.Select(kv => $"{kv.Key}:{kv.Value}"))}"));
        }

        await ctx.Out.WriteLineAsync($"User namespaces: {(isolation.UserNamespaceImages.Count == 0 ? "none" : string.Join(", ", isolation.UserNamespaceImages))}");
        await ctx.Out.WriteLineAsync();
        await ctx.Out.WriteLineAsync($"{"MOUNT POINT",-28} {"TYPE",-12} {"SOURCE",-24} PROVIDED BY");
        foreach (var m in isolation.Mounts)
        {
            await ctx.Out.WriteLineAsync($"{m.MountPoint,-28} {m.FsType,-12} {m.Source,-24} {(m.MountPoint == "/" ? "runtime (rootfs)" : m.External ? "runtime (bind)" : "CRIU")}");
        }

        await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture,
            $"Device nodes:    {(isolation.DeviceNodes.Count == 0 ? "none" : string.Join(", ", isolation.DeviceNodes.Select(d => $"{d.Path} {d.Kind} {d.Major}:{d.Minor}")))}; tmpfs contents {isolation.TmpfsBytes} bytes"));

        if (verdict is not null)
        {
            await ctx.Out.WriteLineAsync();
            await ctx.Out.WriteLineAsync(verdict.Count == 0 ? "Verdict: Crest would allow restoring this checkpoint with that config." : "Verdict: Crest would REFUSE this restore:");
            foreach (var v in verdict)
            {
                await ctx.Out.WriteLineAsync($"  {v}");
            }
        }
    }

    private static ArchiveCompression ParseCompression(string? text)
    {
        try
        {
            return CheckpointArchive.ParseCompression(text ?? "none");
        }
        catch (CrestException e)
        {
            throw new CliUsageException(e.Message);
        }
    }

    /// <summary>Rewrites the archive compressed, through a temporary file beside it, keeping mode 0600.</summary>
    private static async Task CompressInPlaceAsync(string location, ArchiveCompression compression, CancellationToken ct)
    {
        var temp = location + ".crest-compressing";
        await using (var input = File.OpenRead(location))
        await using (var file = new FileStream(temp, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
        {
            Stream compressed = compression == ArchiveCompression.Gzip
                ? new GZipStream(file, CompressionLevel.Fastest, leaveOpen: true)
                : new ZstdSharp.CompressionStream(file, 3, leaveOpen: true);
            await using (compressed)
            {
                await input.CopyToAsync(compressed, ct);
            }
        }

        File.Move(temp, location, overwrite: true);
    }

    private static async Task PrintStatsAsync(string location, CliContext ctx, CancellationToken ct)
    {
        var metadata = await ReadArchiveAsync(location, ct);
        if (metadata.Statistics is not { } s)
        {
            throw new CliFailure(ExitCodes.RuntimeError, $"checkpoint archive {location} has no stats-dump; the runtime did not keep CRIU's statistics");
        }

        if (ctx.Format == OutputFormat.Json)
        {
            await ctx.Out.WriteLineAsync(new System.Text.Json.Nodes.JsonObject
            {
                ["freezing_time_us"] = s.FreezingTimeUs, ["frozen_time_us"] = s.FrozenTimeUs, ["memdump_time_us"] = s.MemdumpTimeUs,
                ["memwrite_time_us"] = s.MemwriteTimeUs, ["pages_scanned"] = s.PagesScanned, ["pages_written"] = s.PagesWritten,
                ["archive_bytes"] = new FileInfo(location).Length,
            }.ToJsonString());
            return;
        }

        await ctx.Out.WriteLineAsync("CRIU DUMP STATISTICS");
        await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"  freezing time   {s.FreezingTimeUs,10} us"));
        await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"  frozen time     {s.FrozenTimeUs,10} us"));
        await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"  memdump time    {s.MemdumpTimeUs,10} us"));
        await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"  memwrite time   {s.MemwriteTimeUs,10} us"));
        await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"  pages scanned   {s.PagesScanned,10}"));
        await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"  pages written   {s.PagesWritten,10}"));
        await ctx.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"  archive size    {new FileInfo(location).Length,10} bytes"));
    }

    private static async Task<ArchiveMetadata> ReadArchiveAsync(string location, CancellationToken ct)
    {
        try
        {
            return await ArchiveMetadataReader.ReadAsync(location, ct);
        }
        catch (Exception e) when (e is CrestException or IOException)
        {
            throw new CliFailure(ExitCodes.RuntimeError, e.Message);
        }
    }

    private static async Task BuildImageAsync(ParseResult parse, GlobalOptions global, TextWriter output, string archivePath, string name, bool push, CancellationToken ct)
    {
        var metadata = await ReadArchiveAsync(archivePath, ct);
        var (imageId, digest) = await CheckpointImageImport.ImportAsync(parse, global, output, archivePath, name, CheckpointImageAnnotations.For(metadata), push, ct);
        await output.WriteLineAsync($"Checkpoint image {name} {imageId}");
        if (digest is not null)
        {
            await output.WriteLineAsync($"Pushed {name} {digest}");
        }
    }
}
