using System.Threading.Channels;
using Crest.Core;
using Crest.Linux;
using Microsoft.Extensions.Logging;

namespace Crest.Runtime;

/// <summary>
/// Deletes a removed container's directory behind the call that removed it, as containerd leaves a removed
/// snapshot's files to its garbage collector: the directory is renamed into <c>&lt;root&gt;/trash</c> (one rename, on
/// the same filesystem) and a single background worker deletes it. A removal's cost no longer grows with what its
/// container wrote. Whatever a stopped or killed crestd left in the trash is deleted at its next start
/// (the worker's first job). A directory with anything still mounted below it is never walked into.
/// </summary>
public sealed partial class DirectoryReaper : IAsyncDisposable
{
    private static readonly TimeSpan DrainOnDispose = TimeSpan.FromSeconds(30);

    private readonly string _trash;
    private readonly ILinux _linux;
    private readonly ILogger<DirectoryReaper> _logger;
    private readonly Channel<string> _queue = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true });
    private readonly Task _worker;
    private int _pending;
    private TaskCompletionSource _idle = NewIdle(completed: true);

    public DirectoryReaper(CrestPaths paths, ILinux linux, ILogger<DirectoryReaper> logger)
    {
        ArgumentNullException.ThrowIfNull(paths);
        _trash = paths.Trash;
        _linux = linux;
        _logger = logger;
        _worker = Task.Run(WorkAsync);
    }

    /// <summary>
    /// Takes <paramref name="dir"/> out of its place at once and deletes it in the background. A directory that
    /// cannot be renamed into the trash (another filesystem) is deleted here instead.
    /// </summary>
    public void Discard(string dir)
    {
        if (!Directory.Exists(dir))
        {
            return;
        }

        Directory.CreateDirectory(_trash);
        var target = Path.Combine(_trash, $"{Path.GetFileName(dir)}-{Guid.NewGuid():N}");
        try
        {
            Directory.Move(dir, target);
        }
        catch (IOException)
        {
            DeleteUnlessMounted(dir);
            return;
        }

        lock (_queue)
        {
            if (_pending++ == 0)
            {
                _idle = NewIdle(completed: false);
            }
        }

        _queue.Writer.TryWrite(target);
    }

    /// <summary>Completes once every directory discarded so far is deleted.</summary>
    public Task IdleAsync()
    {
        lock (_queue)
        {
            return _idle.Task;
        }
    }

    /// <summary>Deletes what an earlier crestd discarded but did not delete before it stopped (the worker's first job).</summary>
    private void SweepLeftovers()
    {
        if (!Directory.Exists(_trash))
        {
            return;
        }

        foreach (var dir in Directory.EnumerateDirectories(_trash))
        {
            DeleteUnlessMounted(dir);
        }
    }

    public async ValueTask DisposeAsync()
    {
        _queue.Writer.TryComplete();
        await _worker.WaitAsync(DrainOnDispose).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    private async Task WorkAsync()
    {
        SweepLeftovers();
        await foreach (var dir in _queue.Reader.ReadAllAsync().ConfigureAwait(false))
        {
            DeleteUnlessMounted(dir);
            lock (_queue)
            {
                if (--_pending == 0)
                {
                    _idle.TrySetResult();
                }
            }
        }
    }

    private void DeleteUnlessMounted(string dir)
    {
        try
        {
            if (!Directory.Exists(dir))
            {
                // The start's sweep took it already.
                return;
            }

            if (_linux.MountsUnder(dir) is { Count: > 0 } mounts)
            {
                // An unmount that failed at removal: deleting would walk into the mounted tree (an image layer below).
                LogStillMounted(_logger, dir, mounts[0]);
                return;
            }

            Directory.Delete(dir, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            LogDeleteFailed(_logger, dir, e.Message);
        }
    }

    private static TaskCompletionSource NewIdle(bool completed)
    {
        var idle = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        if (completed)
        {
            idle.SetResult();
        }

        return idle;
    }

    [LoggerMessage(236, LogLevel.Warning, "the removed directory {Dir} is kept: {Mount} is still mounted below it; unmount it and restart crestd to delete it")]
    private static partial void LogStillMounted(ILogger logger, string dir, string mount);

    [LoggerMessage(237, LogLevel.Warning, "the removed directory {Dir} could not be deleted: {Reason}")]
    private static partial void LogDeleteFailed(ILogger logger, string dir, string reason);
}
