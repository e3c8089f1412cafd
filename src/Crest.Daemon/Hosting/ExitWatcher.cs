using Crest.Runtime;
using Microsoft.Extensions.Hosting;

namespace Crest.Daemon.Hosting;

/// <summary>Records a container that exits on its own at once (and announces it), not at the next list: conmon's exit files as they appear.</summary>
internal sealed class ExitWatcher(ConmonExits exits, ContainerService containers) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var exited = System.Threading.Channels.Channel.CreateUnbounded<string>();
        void Enqueue(string id) => exited.Writer.TryWrite(id);
        exits.Exited += Enqueue;
        try
        {
            await foreach (var id in exited.Reader.ReadAllAsync(stoppingToken))
            {
                try
                {
                    // conmon renames the exit file into place whole: it can be read at once.
                    await containers.ObserveExitAsync(id, stoppingToken);
                }
                catch (Exception e) when (e is Core.CrestException or IOException)
                {
                    _ = e;
                }
            }
        }
        finally
        {
            exits.Exited -= Enqueue;
        }
    }
}
