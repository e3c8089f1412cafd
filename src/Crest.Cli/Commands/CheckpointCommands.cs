using System.CommandLine;
using System.Globalization;
using System.IO.Compression;
using System.Text.Json;
using Crest.Checkpoint;
using Crest.Cli.Output;
using Crest.Core;
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
        var checkpoint = new Command("checkpoint", "Checkpoint a running container into an archive (it keeps running)") { id, export, compress, stats, image, push };
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
                using (var connection = new CriConnection(ctx.RuntimeEndpoint, parse.GetValue(global.Timeout) is null ? TimeSpan.FromMinutes(10) : ctx.Timeout))
                {
                    await CliRunner.CallAsync<bool>(connection, "runtime.v1.RuntimeService/CheckpointContainer", async o =>
                    {
                        await new RuntimeService.RuntimeServiceClient(connection.Channel).CheckpointContainerAsync(
                            new CheckpointContainerRequest { ContainerId = parse.GetValue(id)!, Location = location }, o);
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
            await ctx.Out.WriteLineAsync(JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["freezing_time_us"] = s.FreezingTimeUs, ["frozen_time_us"] = s.FrozenTimeUs, ["memdump_time_us"] = s.MemdumpTimeUs,
                ["memwrite_time_us"] = s.MemwriteTimeUs, ["pages_scanned"] = s.PagesScanned, ["pages_written"] = s.PagesWritten,
                ["archive_bytes"] = new FileInfo(location).Length,
            }));
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
        var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
        using var connection = new CriConnection(ctx.ImageEndpoint, parse.GetValue(global.Timeout) is null ? TimeSpan.FromMinutes(30) : ctx.Timeout);
        var client = new CrestImages.CrestImagesClient(connection.Channel);
        var request = new ImportRootfsRequest { Path = archivePath, Name = name };
        request.Annotations.Add(CheckpointImageAnnotations.For(metadata));
        var imported = await CliRunner.CallAsync(connection, "crest.v1.CrestImages/ImportRootfs", o => client.ImportRootfsAsync(request, o).ResponseAsync, ct);
        await output.WriteLineAsync($"Checkpoint image {name} {imported.ImageId}");
        if (push)
        {
            var pushed = await CliRunner.CallAsync(connection, "crest.v1.CrestImages/Push", o => client.PushAsync(new PushRequest { Image = name }, o).ResponseAsync, ct);
            await output.WriteLineAsync($"Pushed {name} {pushed.ManifestDigest}");
        }
    }
}
