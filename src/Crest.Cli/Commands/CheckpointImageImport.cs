using System.CommandLine;
using Crest.Api.V1;
using Crest.Cli.Output;

namespace Crest.Cli.Commands;

/// <summary>The one path container and pod checkpoint OCI images take into the runtime's image store and out to a registry.</summary>
internal static class CheckpointImageImport
{
    /// <summary>
    /// Stores a checkpoint OCI image in the runtime's image store (one layer holding the tar's files at /, with
    /// <paramref name="annotations"/> on its manifest) and, if asked, pushes it: the one path container and pod
    /// checkpoint images take. Returns the image id and, when pushed, the manifest digest.
    /// </summary>
    public static async Task<(string ImageId, string? PushedDigest)> ImportAsync(ParseResult parse, GlobalOptions global, TextWriter output, string tarPath, string name,
        IReadOnlyDictionary<string, string> annotations, bool push, CancellationToken ct)
    {
        var ctx = CliContext.From(parse, global, OutputFormat.Table, output);
        using var connection = new CriConnection(ctx.ImageEndpoint, parse.GetValue(global.Timeout) is null ? TimeSpan.FromMinutes(30) : ctx.Timeout);
        var client = new CrestImages.CrestImagesClient(connection.Channel);
        var request = new ImportRootfsRequest { Path = tarPath, Name = name };
        foreach (var (k, v) in annotations)
        {
            request.Annotations[k] = v;
        }
        var imported = await CliRunner.CallAsync(connection, "crest.v1.CrestImages/ImportRootfs", o => client.ImportRootfsAsync(request, o).ResponseAsync, ct);
        if (!push)
        {
            return (imported.ImageId, null);
        }

        var pushed = await CliRunner.CallAsync(connection, "crest.v1.CrestImages/Push", o => client.PushAsync(new PushRequest { Image = name }, o).ResponseAsync, ct);
        return (imported.ImageId, pushed.ManifestDigest);
    }
}
