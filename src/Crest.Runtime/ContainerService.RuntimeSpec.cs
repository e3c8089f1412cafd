using System.Text.Json;

namespace Crest.Runtime;

public sealed partial class ContainerService
{
    /// <summary>The OCI runtime spec the container was created with (its bundle's config.json), or null once the bundle is gone.</summary>
    public async Task<JsonElement?> ReadRuntimeSpecAsync(string id, CancellationToken ct)
    {
        var file = bundles.For(id).ConfigJson;
        if (!File.Exists(file))
        {
            return null;
        }

        using var doc = JsonDocument.Parse(await File.ReadAllBytesAsync(file, ct).ConfigureAwait(false));
        return doc.RootElement.Clone();
    }
}
