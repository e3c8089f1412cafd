namespace Crest.Runtime;

// Each container's own CRIU configuration file (CriuConfigFile): named at create, written for one CRIU run, removed after.
public sealed partial class ContainerService
{
    /// <summary>
    /// Writes <paramref name="config"/> as container <paramref name="id"/>'s CRIU configuration file for the CRIU run
    /// that follows; disposing the result removes it, so the container's later runs (its next checkpoint, for one) do
    /// not inherit options meant for this one. Nothing is written when there is nothing to say.
    /// </summary>
    private async Task<CriuConfigScope> WriteCriuConfigAsync(string id, IOciRuntime runtime, CriuConfigFile config, CancellationToken ct)
    {
        var path = bundles.For(id).CriuConfig;
        var defaults = File.Exists(runtime.Handler.CriuDefaultConfig)
            ? await File.ReadAllTextAsync(runtime.Handler.CriuDefaultConfig, ct).ConfigureAwait(false)
            : null;
        var text = config.Render(defaults);
        if (text.Length == 0)
        {
            return new CriuConfigScope(null);
        }

        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        await File.WriteAllTextAsync(path, text, ct).ConfigureAwait(false);
        return new CriuConfigScope(path);
    }

    /// <summary>The configuration file of one CRIU run; removed when disposed.</summary>
    private sealed class CriuConfigScope(string? path) : IDisposable
    {
        public void Dispose()
        {
            if (path is not null)
            {
                File.Delete(path);
            }
        }
    }
}
