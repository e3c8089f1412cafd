using System.Globalization;

namespace Crest.Linux;

/// <summary>
/// Tasks waiting in vfork(2): a parent whose child shares its memory and has not yet called exec or exited. CRIU cannot
/// seize such a task (it sleeps in the kernel, killable only, shown as state D), so a dump that finds one waits out its
/// whole freeze timeout and fails ("Unseizable non-zombie ... state D"). glibc's system() and posix_spawn, Go's
/// os/exec, Python's subprocess and Java's ProcessBuilder all start children this way, and the cgroup freezer can stop
/// the child between its clone and its exec, leaving the parent in that wait for as long as the freeze lasts.
/// </summary>
public static class VforkWaits
{
    /// <summary>
    /// What /proc/TID/wchan names for a vfork wait: <c>wait_for_vfork_done</c> is usually inlined into
    /// <c>kernel_clone</c> (Linux 5.10 on), <c>_do_fork</c> before it, <c>do_fork</c> before 4.2.
    /// </summary>
    private static readonly string[] WaitFunctions = ["kernel_clone", "wait_for_vfork_done", "_do_fork", "do_fork"];

    /// <summary>True when /proc/TID/wchan names a vfork wait. The task's state is not read: a frozen task shows D too.</summary>
    public static bool IsVforkWait(string wchan) => WaitFunctions.Contains(wchan.Trim(), StringComparer.Ordinal);

    /// <summary>
    /// The tasks (thread ids) of <paramref name="pids"/> that wait in vfork, read from <paramref name="proc"/>; a process
    /// or task that is gone, or whose wait channel cannot be read, is left out.
    /// </summary>
    public static IReadOnlyList<int> Of(IEnumerable<int> pids, string proc = "/proc")
    {
        ArgumentNullException.ThrowIfNull(pids);
        var waiting = new List<int>();
        foreach (var pid in pids)
        {
            IEnumerable<string> tasks;
            try
            {
                tasks = Directory.EnumerateDirectories(Path.Combine(proc, pid.ToString(CultureInfo.InvariantCulture), "task")).ToList();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue;
            }

            foreach (var task in tasks)
            {
                if (int.TryParse(Path.GetFileName(task), NumberStyles.None, CultureInfo.InvariantCulture, out var tid) && ReadWaitChannel(task) is { } wchan && IsVforkWait(wchan))
                {
                    waiting.Add(tid);
                }
            }
        }

        return waiting;
    }

    private static string? ReadWaitChannel(string task)
    {
        try
        {
            return File.ReadAllText(Path.Combine(task, "wchan"));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }
}
