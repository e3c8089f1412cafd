using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Crest.Api.V1;
using Crest.Cli.Output;
using Grpc.Core;
using Runtime.V1;
using Spectre.Console;

namespace Crest.Cli.Commands;

/// <summary>crictl's image verbs (pull, images, inspecti, rmi, imagefsinfo) plus Crest's image import/load/push/gc.</summary>
internal static class ImageCommands
{
    public static IEnumerable<Command> Create(GlobalOptions global, TextWriter output)
    {
        yield return Pull(global, output);
        yield return Images(global, output);
        yield return Inspect(global, output);
        yield return Remove(global, output);
        yield return FsInfo(global, output);
        yield return ImageGroup(global, output);
    }

    private static Option<string?> CredsOption() => new("--creds") { Description = "registry credentials USERNAME[:PASSWORD]" };

    private static Option<string?> AuthOption() => new("--auth") { Description = "registry credentials as base64 of USERNAME:PASSWORD" };

    private static (string? User, string? Password, string? Auth) ParseCreds(string? creds, string? auth)
    {
        if (string.IsNullOrEmpty(creds))
        {
            return (null, null, string.IsNullOrEmpty(auth) ? null : auth);
        }

        var colon = creds.IndexOf(':', StringComparison.Ordinal);
        return colon < 0 ? (creds, null, null) : (creds[..colon], creds[(colon + 1)..], null);
    }

    private static Command Pull(GlobalOptions global, TextWriter output)
    {
        var image = new Argument<string>("image") { Description = "the image reference to pull" };
        var creds = CredsOption();
        var auth = AuthOption();
        var command = new Command("pull", "Pull an image from a registry (progress per layer when the runtime is Crest)") { image, creds, auth };
        command.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            var (user, password, authString) = ParseCreds(parse.GetValue(creds), parse.GetValue(auth));
            var name = parse.GetValue(image)!;
            // A pull may take long: the default deadline is generous unless --timeout says otherwise.
            var timeout = parse.GetValue(global.Timeout) is null ? TimeSpan.FromMinutes(30) : ctx.Timeout;
            using var connection = new CriConnection(ctx.ImageEndpoint, timeout);
            string imageId;
            try
            {
                imageId = await PullWithProgressAsync(connection, name, user, password, authString, output, ct);
            }
            catch (CliFailure e) when (e.ExitCode == ExitCodes.NotCri)
            {
                // Not Crest (containerd, CRI-O): the plain CRI pull, without progress.
                var request = new PullImageRequest { Image = new ImageSpec { Image = name } };
                if (user is not null || authString is not null)
                {
                    request.Auth = new AuthConfig { Username = user ?? "", Password = password ?? "", Auth = authString ?? "" };
                }

                var response = await CliRunner.CallAsync(connection, "PullImage",
                    c => new ImageService.ImageServiceClient(connection.Channel).PullImageAsync(request, c).ResponseAsync, ct);
                imageId = response.ImageRef;
            }

            await output.WriteLineAsync($"Image is up to date for {imageId}");
        }));
        return command;
    }

    private static async Task<string> PullWithProgressAsync(CriConnection connection, string name, string? user, string? password, string? auth, TextWriter output, CancellationToken ct)
    {
        var request = new PullWithProgressRequest { Image = name };
        if (auth is not null)
        {
            var decoded = System.Text.Encoding.UTF8.GetString(Convert.FromBase64String(auth));
            var colon = decoded.IndexOf(':', StringComparison.Ordinal);
            (user, password) = colon < 0 ? (decoded, null) : (decoded[..colon], decoded[(colon + 1)..]);
        }

        if (user is not null)
        {
            request.Credentials = new Credentials { Username = user, Password = password ?? "" };
        }

        connection.CheckSocketExists();
        var client = new CrestImages.CrestImagesClient(connection.Channel);
        var interactive = ReferenceEquals(output, Console.Out) && !Console.IsOutputRedirected;
        try
        {
            using var call = client.PullWithProgress(request, connection.CallOptions(ct));
            if (interactive)
            {
                string? id = null;
                await AnsiConsole.Progress()
                    .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn())
                    .StartAsync(async p =>
                    {
                        var tasks = new Dictionary<string, ProgressTask>(StringComparer.Ordinal);
                        await foreach (var e in call.ResponseStream.ReadAllAsync(ct))
                        {
                            if (e.Phase == "complete" && e.ImageId.Length > 0)
                            {
                                id = e.ImageId;
                                continue;
                            }

                            if (e.Blob.Length == 0)
                            {
                                continue;
                            }

                            if (!tasks.TryGetValue(e.Blob, out var task))
                            {
                                task = tasks[e.Blob] = p.AddTask(Short(e.Blob), maxValue: Math.Max(1, e.Total));
                            }

                            task.Description = $"{Short(e.Blob)} {e.Phase}";
                            task.Value = e.Phase is "done" or "exists" ? task.MaxValue : Math.Min(e.Done, task.MaxValue);
                        }
                    });
                return id ?? throw new CliFailure(ExitCodes.RuntimeError, $"the pull of {name} ended without naming the image");
            }

            var lastPhase = new Dictionary<string, string>(StringComparer.Ordinal);
            string? imageId = null;
            await foreach (var e in call.ResponseStream.ReadAllAsync(ct))
            {
                if (e.Phase == "complete" && e.ImageId.Length > 0)
                {
                    imageId = e.ImageId;
                }
                else if (e.Blob.Length > 0 && (!lastPhase.TryGetValue(e.Blob, out var phase) || phase != e.Phase))
                {
                    // Plain lines, one per phase change, when not on a terminal.
                    lastPhase[e.Blob] = e.Phase;
                    await output.WriteLineAsync($"{Short(e.Blob)}: {e.Phase} ({HumanSize(e.Total)})");
                }
            }

            return imageId ?? throw new CliFailure(ExitCodes.RuntimeError, $"the pull of {name} ended without naming the image");
        }
        catch (RpcException e)
        {
            throw connection.Explain(e, "PullWithProgress");
        }
    }

    private static Command Images(GlobalOptions global, TextWriter output)
    {
        var filter = new Argument<string?>("image") { Description = "show only this image", Arity = ArgumentArity.ZeroOrOne };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "only image IDs" };
        var digests = new Option<bool>("--digests") { Description = "show digests" };
        var noTrunc = new Option<bool>("--no-trunc") { Description = "full image IDs" };
        var command = new Command("images", "List images") { filter, quiet, digests, noTrunc };
        command.Aliases.Add("img");
        command.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            using var connection = new CriConnection(ctx.ImageEndpoint, ctx.Timeout);
            var request = new ListImagesRequest();
            if (parse.GetValue(filter) is { Length: > 0 } f)
            {
                request.Filter = new ImageFilter { Image = new ImageSpec { Image = f } };
            }

            var response = await CliRunner.CallAsync(connection, "ListImages",
                c => new ImageService.ImageServiceClient(connection.Channel).ListImagesAsync(request, c).ResponseAsync, ct);
            if (ctx.Format != OutputFormat.Table)
            {
                ctx.Renderer().Document(Renderer.ToJson(response));
                return;
            }

            if (parse.GetValue(quiet))
            {
                foreach (var i in response.Images)
                {
                    await output.WriteLineAsync(i.Id);
                }

                return;
            }

            var showDigests = parse.GetValue(digests);
            var full = parse.GetValue(noTrunc);
            var rows = new List<string[]>();
            foreach (var i in response.Images)
            {
                var id = full ? i.Id : Short(i.Id);
                var digest = i.RepoDigests.Count > 0 ? Short(i.RepoDigests[0][(i.RepoDigests[0].IndexOf('@', StringComparison.Ordinal) + 1)..]) : "<none>";
                var names = i.RepoTags.Count > 0 ? i.RepoTags.ToList() : i.RepoDigests.Select(d => d[..d.IndexOf('@', StringComparison.Ordinal)] + ":<none>").Take(1).ToList();
                if (names.Count == 0)
                {
                    names.Add("<none>:<none>");
                }

                foreach (var n in names)
                {
                    var colon = n.LastIndexOf(':');
                    var row = new List<string> { n[..colon], n[(colon + 1)..] };
                    if (showDigests)
                    {
                        row.Add(digest);
                    }

                    row.AddRange([id, HumanSize((long)i.Size)]);
                    rows.Add([.. row]);
                }
            }

            string[] header = showDigests ? ["IMAGE", "TAG", "DIGEST", "IMAGE ID", "SIZE"] : ["IMAGE", "TAG", "IMAGE ID", "SIZE"];
            await Columns.WriteAsync(output, header, rows);
        }));
        return command;
    }

    private static Command Inspect(GlobalOptions global, TextWriter output)
    {
        var images = new Argument<string[]>("image") { Description = "image name or ID", Arity = ArgumentArity.OneOrMore };
        var command = new Command("inspecti", "Show an image's status and configuration") { images };
        command.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Json, output);
            using var connection = new CriConnection(ctx.ImageEndpoint, ctx.Timeout);
            var exit = ExitCodes.Success;
            foreach (var name in parse.GetValue(images)!)
            {
                var response = await CliRunner.CallAsync(connection, "ImageStatus",
                    c => new ImageService.ImageServiceClient(connection.Channel).ImageStatusAsync(
                        new ImageStatusRequest { Image = new ImageSpec { Image = name }, Verbose = true }, c).ResponseAsync, ct);
                if (response.Image is null)
                {
                    await CliRunner.Error.WriteLineAsync($"crest: no such image {name}");
                    exit = ExitCodes.RuntimeError;
                    continue;
                }

                var doc = new JsonObject { ["status"] = Renderer.ToJson(response.Image) };
                foreach (var (key, value) in response.Info)
                {
                    doc[key] = TryParse(value);
                }

                ctx.Renderer().Document(doc);
            }

            return exit;
        }));
        return command;
    }

    private static Command Remove(GlobalOptions global, TextWriter output)
    {
        var images = new Argument<string[]>("image") { Description = "image names or IDs", Arity = ArgumentArity.OneOrMore };
        var command = new Command("rmi", "Remove images") { images };
        command.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            using var connection = new CriConnection(ctx.ImageEndpoint, ctx.Timeout);
            var client = new ImageService.ImageServiceClient(connection.Channel);
            var exit = ExitCodes.Success;
            foreach (var name in parse.GetValue(images)!)
            {
                // RemoveImage is idempotent in the CRI; ask first so a typo is reported, as crictl does.
                var status = await CliRunner.CallAsync(connection, "ImageStatus",
                    c => client.ImageStatusAsync(new ImageStatusRequest { Image = new ImageSpec { Image = name } }, c).ResponseAsync, ct);
                if (status.Image is null)
                {
                    await CliRunner.Error.WriteLineAsync($"crest: no such image {name}");
                    exit = ExitCodes.RuntimeError;
                    continue;
                }

                await CliRunner.CallAsync(connection, "RemoveImage",
                    c => client.RemoveImageAsync(new RemoveImageRequest { Image = new ImageSpec { Image = status.Image.Id } }, c).ResponseAsync, ct);
                foreach (var n in status.Image.RepoTags.Concat(status.Image.RepoDigests).DefaultIfEmpty(status.Image.Id))
                {
                    await output.WriteLineAsync($"Deleted: {n}");
                }
            }

            return exit;
        }));
        return command;
    }

    private static Command FsInfo(GlobalOptions global, TextWriter output)
    {
        var command = new Command("imagefsinfo", "Show the bytes and inodes used by images and containers");
        command.SetAction((parse, ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Json, output);
            using var connection = new CriConnection(ctx.ImageEndpoint, ctx.Timeout);
            var response = await CliRunner.CallAsync(connection, "ImageFsInfo",
                c => new ImageService.ImageServiceClient(connection.Channel).ImageFsInfoAsync(new ImageFsInfoRequest(), c).ResponseAsync, ct);
            if (ctx.Format == OutputFormat.Table)
            {
                var rows = response.ImageFilesystems.Select(f => new[] { "image", f.FsId.Mountpoint, HumanSize((long)f.UsedBytes.Value), f.InodesUsed.Value.ToString(CultureInfo.InvariantCulture) })
                    .Concat(response.ContainerFilesystems.Select(f => new[] { "container", f.FsId.Mountpoint, HumanSize((long)f.UsedBytes.Value), f.InodesUsed.Value.ToString(CultureInfo.InvariantCulture) }));
                await Columns.WriteAsync(output, ["FILESYSTEM", "MOUNTPOINT", "USED", "INODES"], rows.ToList());
                return;
            }

            ctx.Renderer().Document(new JsonObject { ["status"] = Renderer.ToJson(response) });
        }));
        return command;
    }

    private static Command ImageGroup(GlobalOptions global, TextWriter output)
    {
        var group = new Command("image", "Crest image tools: import a rootfs, load an OCI archive, push, collect garbage");

        var importPath = new Argument<string>("rootfs") { Description = "a root filesystem tarball (plain, gzip or zstd) on this node" };
        var importName = new Argument<string>("name") { Description = "the name to give the image" };
        var import = new Command("import", "Make a one-layer image from a root filesystem tarball") { importPath, importName };
        import.SetAction((parse, ct) => CrestCall(parse, global, output, async (client, options) =>
        {
            var r = await client.ImportRootfsAsync(new ImportRootfsRequest { Path = Path.GetFullPath(parse.GetValue(importPath)!), Name = parse.GetValue(importName)! }, options);
            await output.WriteLineAsync(r.ImageId);
        }, ct));

        var loadPath = new Argument<string>("archive") { Description = "an OCI image layout archive (tar, tar.gz or tar.zst) on this node" };
        var loadName = new Argument<string?>("name") { Description = "name for an image the archive does not name", Arity = ArgumentArity.ZeroOrOne };
        var load = new Command("load", "Load the images of an OCI layout archive") { loadPath, loadName };
        load.SetAction((parse, ct) => CrestCall(parse, global, output, async (client, options) =>
        {
            var r = await client.LoadArchiveAsync(new LoadArchiveRequest { Path = Path.GetFullPath(parse.GetValue(loadPath)!), Name = parse.GetValue(loadName) ?? "" }, options);
            foreach (var i in r.Images)
            {
                await output.WriteLineAsync($"Loaded {string.Join(", ", i.RepoTags)} {i.ImageId}");
            }
        }, ct));

        var pushName = new Argument<string>("name") { Description = "the image to push; its name says where" };
        var creds = CredsOption();
        var push = new Command("push", "Push an image to the registry its name points at") { pushName, creds };
        push.SetAction((parse, ct) => CrestCall(parse, global, output, async (client, options) =>
        {
            var request = new PushRequest { Image = parse.GetValue(pushName)! };
            var (user, password, _) = ParseCreds(parse.GetValue(creds), null);
            if (user is not null)
            {
                request.Credentials = new Credentials { Username = user, Password = password ?? "" };
            }

            var r = await client.PushAsync(request, options);
            await output.WriteLineAsync($"Pushed {request.Image} {r.ManifestDigest}");
        }, ct));

        var gc = new Command("gc", "Remove blobs and snapshots no image or container needs");
        gc.SetAction((parse, ct) => CrestCall(parse, global, output, async (client, options) =>
        {
            var r = await client.CollectGarbageAsync(new CollectGarbageRequest(), options);
            await output.WriteLineAsync($"Removed {r.BlobsRemoved} blobs and {r.SnapshotsRemoved} snapshots");
        }, ct));

        group.Subcommands.Add(import);
        group.Subcommands.Add(load);
        group.Subcommands.Add(push);
        group.Subcommands.Add(gc);
        return group;
    }

    private static Task<int> CrestCall(ParseResult parse, GlobalOptions global, TextWriter output,
        Func<CrestImages.CrestImagesClient, CallOptions, Task> call, CancellationToken ct) => CliRunner.RunAsync(async () =>
        {
            var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
            var timeout = parse.GetValue(global.Timeout) is null ? TimeSpan.FromMinutes(30) : ctx.Timeout;
            using var connection = new CriConnection(ctx.ImageEndpoint, timeout);
            await CliRunner.CallAsync<bool>(connection, "crest.v1.CrestImages", async options =>
            {
                await call(new CrestImages.CrestImagesClient(connection.Channel), options);
                return true;
            }, ct);
        });

    internal static string Short(string digest)
    {
        var hex = digest.StartsWith("sha256:", StringComparison.Ordinal) ? digest[7..] : digest;
        return hex.Length > 13 ? hex[..13] : hex;
    }

    /// <summary>Decimal units as crictl prints sizes: 1.23MB.</summary>
    internal static string HumanSize(long bytes)
    {
        string[] units = ["B", "kB", "MB", "GB", "TB"];
        double value = bytes;
        var unit = 0;
        while (value >= 1000 && unit < units.Length - 1)
        {
            value /= 1000;
            unit++;
        }

        return unit == 0 ? $"{bytes}B" : value.ToString(value >= 100 ? "0" : value >= 10 ? "0.#" : "0.##", CultureInfo.InvariantCulture) + units[unit];
    }

    private static JsonNode? TryParse(string value)
    {
        try
        {
            return JsonNode.Parse(value);
        }
        catch (System.Text.Json.JsonException)
        {
            return value;
        }
    }
}

/// <summary>Left-aligned columns separated by spaces, as crictl prints its tables.</summary>
internal static class Columns
{
    public static async Task WriteAsync(TextWriter output, string[] header, IReadOnlyList<string[]> rows)
    {
        var widths = header.Select((h, i) => Math.Max(h.Length, rows.Select(r => r[i].Length).DefaultIfEmpty(0).Max())).ToArray();
        await output.WriteLineAsync(Line(header, widths));
        foreach (var row in rows)
        {
            await output.WriteLineAsync(Line(row, widths));
        }
    }

    private static string Line(string[] cells, int[] widths) =>
        string.Join("   ", cells.Select((c, i) => i == cells.Length - 1 ? c : c.PadRight(widths[i]))).TrimEnd();
}
