using Crest.Runtime;
using Microsoft.Extensions.Hosting;

namespace Crest.Daemon.Hosting;

/// <summary>Watches conmon's exit directory so a container that exits on its own is recorded (and announced) at once, not at the next list.</summary>
internal sealed class ExitWatcher(RuntimeLayout layout, ContainerService containers) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        Directory.CreateDirectory(layout.ExitDir);
        var created = System.Threading.Channels.Channel.CreateUnbounded<string>();
        using var watcher = new FileSystemWatcher(layout.ExitDir) { EnableRaisingEvents = true };
        watcher.Created += (_, e) => created.Writer.TryWrite(e.Name ?? "");
        watcher.Renamed += (_, e) => created.Writer.TryWrite(e.Name ?? "");
        await foreach (var name in created.Reader.ReadAllAsync(stoppingToken))
        {
            if (name.Length == 64)
            {
                try
                {
                    // conmon writes the file, then fills it: give it a moment before reading the exit code.
                    await Task.Delay(50, stoppingToken);
                    await containers.ObserveExitAsync(name, stoppingToken);
                }
                catch (Exception e) when (e is Core.CrestException or IOException)
                {
                    _ = e;
                }
            }
        }
    }
}
