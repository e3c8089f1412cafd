using Crest.Checkpoint;
using Microsoft.Extensions.Hosting;

namespace Crest.Daemon.Hosting;

/// <summary>
/// Keeps CRIU's kernel facts for this boot once crestd serves (<see cref="CriuKernelFactsCache"/>): in the background, so
/// that start-up does not wait for a CRIU run; until it is done a CRIU run gathers them itself, as without it.
/// </summary>
internal sealed class CriuKernelFactsKeeper(CriuKernelFactsCache cache) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        await Task.Yield();
        try
        {
            // The outcome is logged where something was done or failed.
            _ = await cache.EnsureAsync(stoppingToken);
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    /// <summary>
    /// crestd's own command line for <c>crestd criu-kernel-facts</c>: the native binary, or <c>dotnet crestd.dll</c> for
    /// a JIT build.
    /// </summary>
    public static IReadOnlyList<string> ProbeCommand()
    {
        var process = Environment.ProcessPath ?? "crestd";
        IReadOnlyList<string> self = Path.GetFileNameWithoutExtension(process) == "dotnet" ? [process, Environment.GetCommandLineArgs()[0]] : [process];
        return [.. self, "criu-kernel-facts"];
    }
}
