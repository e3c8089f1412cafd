using System.Collections.Concurrent;
using System.Globalization;
using System.Text.RegularExpressions;
using Crest.Core;
using Crest.Linux;
using Microsoft.Extensions.Logging;

namespace Crest.Runtime;

/// <summary>
/// A post-copy source's CRIU, still running after the images were written: <c>runc checkpoint --lazy-pages</c> serves
/// the frozen container's memory from its page server until the target's <c>criu lazy-pages</c> disconnects. Its process
/// group (runc and the CRIU it started) is killed by <see cref="Kill"/>.
/// </summary>
public sealed class LazyCheckpoint(ChildProcess runc, string workPath, string pageServer)
{
    private readonly Task<int> _exit = runc.WaitAsync(CancellationToken.None);

    /// <summary>runc's pid, which leads the process group of the CRIU serving the pages.</summary>
    public int Pid => runc.Pid;

    /// <summary>
    /// Whether <paramref name="pid"/> is still the lazy checkpoint (<c>runc checkpoint --lazy-pages</c>) of
    /// <paramref name="containerId"/>: a page server a crashed crestd left behind, and not a process that reused its pid.
    /// </summary>
    public static bool IsPageServerOf(int pid, string containerId)
    {
        try
        {
            var argv = File.ReadAllText($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/cmdline").Split('\0');
            return argv.Contains("checkpoint", StringComparer.Ordinal) && argv.Contains("--lazy-pages", StringComparer.Ordinal) && argv.Contains(containerId, StringComparer.Ordinal);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>The <c>HOST:PORT</c> the page server listens on.</summary>
    public string PageServer => pageServer;

    /// <summary>
    /// Why the page server's listening socket could not be given TCP_NODELAY, or null when it has it, so the connection it
    /// accepts sends each write at once (CRIU leaves Nagle's algorithm on until it serves pages; see
    /// <see cref="ILinux.SetListenerNoDelay"/>).
    /// </summary>
    public string? NagleKept { get; internal set; }

    /// <summary>The dump's work directory (dump.log); the caller removes it once the page server ended.</summary>
    public string WorkPath => workPath;

    /// <summary>runc's exit code: 0 when CRIU served until the other side disconnected.</summary>
    public Task<int> Exit => _exit;

    /// <summary>Ends the page server: SIGKILL to runc and its CRIU, then waits for runc's exit.</summary>
    public async Task KillAsync()
    {
        if (!_exit.IsCompleted)
        {
            _ = ChildProcess.SignalGroup(runc.Pid, 9);
        }

        await _exit.ConfigureAwait(false);
    }
}

/// <summary>How a target's post-copy transfer stands: pages fetched so far of all, and how it ended.</summary>
public sealed record LazyPagesState(string ContainerId, bool Finished, bool Succeeded, long Pages, long TotalPages, string? Problem);

/// <summary>
/// The target side of post-copy: one <c>criu lazy-pages</c> daemon per restored container, started before the
/// restore, and its watchdog. When the daemon ends without every page (its page source went away, the connection broke),
/// the restored container is killed at once: once the daemon's userfaultfd closes, a page it never fetched would read as
/// zeros, so that copy must not run on.
/// </summary>
public sealed partial class LazyPageTransfers(string criuPath, TimeProvider time, ILogger<LazyPageTransfers> logger, PageTransferIdentities? identities = null)
{
    /// <summary>This node's page transfer key pairs: a transfer over TLS uses the one its migration prepared, and ends it.</summary>
    public PageTransferIdentities? Identities => identities;

    private static readonly TimeSpan SocketWait = TimeSpan.FromSeconds(10);

    private static readonly TimeSpan SocketPoll = TimeSpan.FromMilliseconds(5);

    private readonly ConcurrentDictionary<string, Transfer> _transfers = new(StringComparer.Ordinal);

    private sealed record Transfer(ChildProcess Daemon, Task<int> Exit, string LogPath, Task<LazyPagesState> Done);

    /// <summary>
    /// Starts the daemon for <paramref name="containerId"/> and waits until its socket exists (the restore connects to it).
    /// <paramref name="onFailure"/> runs when the daemon ends without having fetched every page; <paramref name="onEnd"/> whenever it ends.
    /// </summary>
    public async Task StartAsync(string containerId, CriuLazyPagesOptions options, Func<string, Task> onFailure, Func<Task> onEnd, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(options);
        var log = Path.Combine(options.WorkPath, options.LogFile);
        var socket = Path.Combine(options.WorkPath, CriuLazyPagesOptions.Socket);
        File.Delete(socket);
        var criu = ExecutableSearch.Resolve(criuPath)
            ?? throw new CrestException(ErrorKind.FailedPrecondition, $"criu '{criuPath}' was not found; a post-copy restore needs it ([checkpoint] criu_path; make deps)");
        var argv = options.Arguments(criu);
        var daemon = ChildProcess.Spawn(criu, argv, [ChildFd.Null(0), ChildFd.Null(1), ChildFd.Null(2)], newSession: true);
        var exit = daemon.WaitAsync(CancellationToken.None);
        // The injected clock, so a test can pass the wait without spending it.
        var started = time.GetTimestamp();
        while (!File.Exists(socket))
        {
            if (exit.IsCompleted || time.GetElapsedTime(started) > SocketWait)
            {
                if (!exit.IsCompleted)
                {
                    daemon.KillAndReap();
                }

                throw new CrestException(ErrorKind.Internal,
                    $"container {containerId}: criu lazy-pages did not open {socket} within {SocketWait.TotalSeconds:0} s (page source {options.Address}:{options.Port})" + ContainerService.CriuLogExcerpt(log));
            }

            try
            {
                await Task.Delay(SocketPoll, time, ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                // Nobody would track or stop a daemon whose start was abandoned.
                if (!exit.IsCompleted)
                {
                    daemon.KillAndReap();
                }

                throw;
            }
        }

        var done = WatchAsync(containerId, exit, log, onFailure, onEnd);
        _transfers[containerId] = new Transfer(daemon, exit, log, done);
        RuntimeLog.LazyPagesStarted(logger, containerId, options.Address, options.Port);
    }

    /// <summary>Kills a container's daemon (its restore failed); a container without one is left alone.</summary>
    public async Task StopAsync(string containerId)
    {
        if (_transfers.TryGetValue(containerId, out var t))
        {
            if (!t.Exit.IsCompleted)
            {
                // Not yet reaped, so its process group is still the daemon's.
                _ = ChildProcess.SignalGroup(t.Daemon.Pid, 9);
            }

            await t.Done.ConfigureAwait(false);
        }
    }

    /// <summary>The transfer's state now, or (with <paramref name="wait"/>) once it ended; null for a container without one.</summary>
    public async Task<LazyPagesState?> StateAsync(string containerId, bool wait, CancellationToken ct)
    {
        if (!_transfers.TryGetValue(containerId, out var t))
        {
            return null;
        }

        if (wait)
        {
            return await t.Done.WaitAsync(ct).ConfigureAwait(false);
        }

        if (t.Done.IsCompleted)
        {
            return await t.Done.ConfigureAwait(false);
        }

        var (pages, total) = Progress(t.LogPath);
        return new LazyPagesState(containerId, false, false, pages, total, null);
    }

    /// <summary>Forgets a container's transfer (it was removed).</summary>
    public void Forget(string containerId) => _transfers.TryRemove(containerId, out _);

    private async Task<LazyPagesState> WatchAsync(string containerId, Task<int> exit, string log, Func<string, Task> onFailure, Func<Task> onEnd)
    {
        var code = await exit.ConfigureAwait(false);
        var (pages, total) = Progress(log);
        // Exit code 0: every page of every restored process was fetched, or the process no longer needs it (it exited or
        // unmapped it, which is why the per-process counts in the log may fall short). A lost page source is an error exit.
        var complete = code == 0;
        string? problem = null;
        if (!complete)
        {
            problem = string.Create(CultureInfo.InvariantCulture,
                $"criu lazy-pages ended with exit code {code} after {pages} of {total} pages; the restored container was killed, as memory it never received would read as zeros") + ContainerService.CriuLogExcerpt(log);
            RuntimeLog.LazyPagesFailed(logger, containerId, code, pages, total);
            try
            {
                await onFailure(problem).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                problem += $"; killing it failed: {e.Message}";
            }
        }
        else
        {
            RuntimeLog.LazyPagesFinished(logger, containerId, pages, total);
        }

        try
        {
            await onEnd().ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            RuntimeLog.LazyPagesCleanupFailed(logger, containerId, e.Message);
        }

        return new LazyPagesState(containerId, true, complete, pages, total, problem);
    }

    /// <summary>Pages fetched and pages in all, from the daemon's log ("UFFD transferred pages: (N/M)" per process, at its end).</summary>
    internal static (long Pages, long Total) Progress(string log)
    {
        long pages = 0, total = 0;
        try
        {
            foreach (var line in File.ReadLines(log))
            {
                var m = TransferredPages().Match(line);
                if (m.Success)
                {
                    pages += long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
                    total += long.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture);
                }
            }
        }
        catch (IOException)
        {
        }

        return (pages, total);
    }

    [GeneratedRegex(@"UFFD transferred pages: \((\d+)/(\d+)\)")]
    private static partial Regex TransferredPages();
}
