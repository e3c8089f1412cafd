using System.Collections.Concurrent;

namespace Crest.Runtime;

/// <summary>
/// conmon's exit directory as events: conmon writes <c>&lt;exit dir&gt;/&lt;id&gt;</c> whole (a temporary file renamed into
/// place) once a container's or pod infra's process has ended and been reaped. One inotify watch on the directory wakes
/// whoever waits for that id, and tells <see cref="Exited"/> subscribers (the daemon records exits as they happen), so no
/// caller polls for an exit.
/// </summary>
public sealed class ConmonExits : IDisposable
{
    private readonly string _dir;
    private readonly TimeProvider _time;
    private readonly FileSystemWatcher _watcher;
    private readonly ConcurrentDictionary<string, TaskCompletionSource> _waiters = new(StringComparer.Ordinal);

    public ConmonExits(RuntimeLayout layout, TimeProvider time)
    {
        ArgumentNullException.ThrowIfNull(layout);
        _dir = layout.ExitDir;
        _time = time;
        Directory.CreateDirectory(_dir);
        _watcher = new FileSystemWatcher(_dir);
        _watcher.Created += (_, e) => Arrived(e.Name);
        _watcher.Renamed += (_, e) => Arrived(e.Name);
        // A lost event (the kernel's queue overflowed): every waiter looks at the directory again.
        _watcher.Error += (_, _) => WakeAll();
        _watcher.EnableRaisingEvents = true;
    }

    /// <summary>Raised with the id of each exit file that appears (on the watcher's thread: hand the work off).</summary>
    public event Action<string>? Exited;

    /// <summary>
    /// Waits until conmon has recorded the exit of <paramref name="id"/>; false if <paramref name="timeout"/> passes first.
    /// An exit recorded before the call returns true at once.
    /// </summary>
    public async Task<bool> WaitAsync(string id, TimeSpan timeout, CancellationToken ct)
    {
        var file = Path.Combine(_dir, id);
        var deadline = _time.GetUtcNow() + timeout;
        while (true)
        {
            // Registered before looking, so an exit written between the look and the wait still wakes this one.
            var waiter = _waiters.GetOrAdd(id, _ => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
            if (File.Exists(file))
            {
                _waiters.TryRemove(new KeyValuePair<string, TaskCompletionSource>(id, waiter));
                return true;
            }

            var left = deadline - _time.GetUtcNow();
            if (left <= TimeSpan.Zero)
            {
                _waiters.TryRemove(new KeyValuePair<string, TaskCompletionSource>(id, waiter));
                return false;
            }

            try
            {
                // A timer takes at most about 49 days; a longer stop timeout just waits again.
                await waiter.Task.WaitAsync(left < MaxTimer ? left : MaxTimer, _time, ct).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                // Looked at once more above, then false.
            }
        }
    }

    private static readonly TimeSpan MaxTimer = TimeSpan.FromDays(1);

    public void Dispose()
    {
        _watcher.Dispose();
        WakeAll();
    }

    private void Arrived(string? name)
    {
        // conmon's temporary file (id.XXXXXX) is not the exit file: only a name that is a whole id counts.
        if (string.IsNullOrEmpty(name) || name.Contains('.', StringComparison.Ordinal))
        {
            return;
        }

        if (_waiters.TryRemove(name, out var waiter))
        {
            waiter.TrySetResult();
        }

        Exited?.Invoke(name);
    }

    private void WakeAll()
    {
        foreach (var id in _waiters.Keys)
        {
            if (_waiters.TryRemove(id, out var waiter))
            {
                waiter.TrySetResult();
            }
        }
    }
}
