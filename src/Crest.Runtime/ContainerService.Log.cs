using Crest.Core;
using Crest.Linux;

namespace Crest.Runtime;

// ReopenContainerLog: conmon's control FIFO, after the kubelet rotated the log.
public sealed partial class ContainerService
{
    /// <summary>
    /// Asks conmon to reopen the CRI log file (after the kubelet rotated it), through its control FIFO in the
    /// bundle: message type 2 is "reopen logs".
    /// </summary>
    public async Task ReopenLogAsync(string idOrPrefix, CancellationToken ct)
    {
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        if (c.State != ContainerState.Running)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {c.Id} is {c.State}; only a running container's log can be reopened");
        }

        var ctl = bundles.For(c.Id).ControlFifo;
        if (!File.Exists(ctl))
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {c.Id} has no conmon control FIFO at {ctl}");
        }

        // O_NONBLOCK: if conmon is gone there is no reader, and the open fails instead of hanging.
        await using (var fifo = new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(OpenFifoForWrite(ctl, c.Id), ownsHandle: true), FileAccess.Write, 1))
        {
            await fifo.WriteAsync("2 0 0\n"u8.ToArray(), ct).ConfigureAwait(false);
        }

        // conmon reopens when it reads the request; the call returns once the file is there again (the kubelet's log
        // rotation renames it first and expects the new one when the call returns), within a bound.
        if (c.LogFile.Length == 0)
        {
            return;
        }

        var deadline = time.GetUtcNow() + LogReopenTimeout;
        while (!File.Exists(c.LogFile))
        {
            if (time.GetUtcNow() > deadline)
            {
                throw new CrestException(ErrorKind.DeadlineExceeded,
                    $"container {c.Id}: conmon was asked to reopen {c.LogFile} but the file did not appear within {LogReopenTimeout.TotalSeconds:0} s; check that its directory exists and is writable");
            }

            await Task.Delay(LogReopenPoll, time, ct).ConfigureAwait(false);
        }
    }

    private static readonly TimeSpan LogReopenTimeout = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan LogReopenPoll = TimeSpan.FromMilliseconds(5);

    private static int OpenFifoForWrite(string path, string id)
    {
        var fd = FileKinds.OpenWriteNonBlocking(path);
        return fd >= 0 ? fd : throw new CrestException(ErrorKind.FailedPrecondition, $"container {id}: conmon is not listening on {path}");
    }

}
