using System.Text.Json;

namespace Crest.Runtime;

public sealed partial class ContainerService
{
    /// <summary>The OCI runtime spec the container was created with (its bundle's config.json), or null once the bundle is gone.</summary>
    public async Task<JsonElement?> ReadRuntimeSpecAsync(string id, CancellationToken ct)
    {
        var file = Path.Combine(layout.ContainerDir(id), "bundle", "config.json");
        return File.Exists(file) ? JsonDocument.Parse(await File.ReadAllBytesAsync(file, ct).ConfigureAwait(false)).RootElement : null;
    }
}
