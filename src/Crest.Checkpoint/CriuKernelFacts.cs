using Crest.Core;
using Crest.Linux;
using Crest.Runtime;
using Microsoft.Extensions.Logging;

namespace Crest.Checkpoint;

/// <summary>Where and how crestd keeps CRIU's cache of kernel facts for a node whose <c>/run</c> is not a tmpfs.</summary>
public sealed record CriuKernelFactsOptions
{
    public bool Enabled { get; init; } = true;

    public required string CriuPath { get; init; }

    /// <summary>The directory CRIU keeps <c>criu.kdat</c> in: <c>/run</c>, compiled into CRIU.</summary>
    public string RunDirectory { get; init; } = "/run";

    /// <summary>The facts crestd had CRIU gather (under the persistent root, outside <see cref="RunDirectory"/>).</summary>
    public required string CacheFile { get; init; }

    /// <summary>crestd's own command line for its probe (<c>crestd criu-kernel-facts</c>), run in a mount namespace of its own.</summary>
    public required IReadOnlyList<string> Probe { get; init; }
}

/// <summary>
/// <c>unshare --mount --propagation private -- PROBE --criu CRIU --run-dir /run --out FILE</c>: crestd's probe in a mount
/// namespace of its own, where it may put a tmpfs on <c>/run</c> without the host seeing it.
/// </summary>
public sealed record CriuKernelFactsProbeCommand(IReadOnlyList<string> Probe, string CriuPath, string RunDirectory, string Output)
{
    public CommandLine ToCommandLine() =>
        new("unshare", ["--mount", "--propagation", "private", "--", .. Probe, "--criu", CriuPath, "--run-dir", RunDirectory, "--out", Output]);
}

/// <summary>What <see cref="CriuKernelFactsCache.EnsureAsync"/> found or did.</summary>
public enum CriuKernelFactsOutcome
{
    /// <summary>[checkpoint] keep_criu_kernel_facts = false, or checkpoints are off.</summary>
    Disabled,

    /// <summary><c>/run</c> is a tmpfs: CRIU keeps its cache there itself.</summary>
    CriuKeepsThem,

    /// <summary>A cache newer than the CRIU binary is already in place (an earlier crestd of this boot made it).</summary>
    AlreadyKept,

    /// <summary>Gathered and bound onto <c>/run/criu.kdat</c>.</summary>
    Kept,

    /// <summary>Another crestd is gathering them now.</summary>
    Busy,

    /// <summary>The probe failed; CRIU gathers the facts on each run, as before (logged).</summary>
    Failed,
}

/// <summary>
/// CRIU learns about the kernel (kerndat) at the start of every run, about 80 ms on a 2-core VM, and keeps what it learnt
/// in <c>/run/criu.kdat</c> only when <c>/run</c> is a tmpfs, so that a reboot (with maybe another kernel) drops it. On a
/// node whose <c>/run</c> is a plain directory every CRIU run pays it, three times on a post-copy migration's critical
/// path. crestd gathers the facts once in a mount namespace of its own with a tmpfs on <c>/run</c> (CRIU writes its cache
/// there), keeps the file under its root and binds it onto an empty <c>/run/criu.kdat</c>: a bind mount does not survive a
/// reboot, and CRIU discards the empty file left behind (it checks the size and two magic numbers). Facts older than the
/// CRIU binary are gathered again.
/// </summary>
public sealed partial class CriuKernelFactsCache(CriuKernelFactsOptions options, ILinux linux, ICommandRunner commands, ILogger<CriuKernelFactsCache> logger)
{
    /// <summary>CRIU's cache file name in its run directory.</summary>
    public const string FileName = "criu.kdat";

    /// <summary>crestd's lock beside CRIU's cache file, so that one crestd at a time gathers and binds.</summary>
    public const string LockName = "crest-criu-kernel-facts.lock";

    /// <summary>Bind mounts stacked on the cache that a refresh takes off at most.</summary>
    private const int MaxStacked = 8;

    public async Task<CriuKernelFactsOutcome> EnsureAsync(CancellationToken ct)
    {
        if (!options.Enabled)
        {
            return CriuKernelFactsOutcome.Disabled;
        }

        if (linux.IsTmpfs(options.RunDirectory))
        {
            return CriuKernelFactsOutcome.CriuKeepsThem;
        }

        if (ExecutableSearch.Resolve(options.CriuPath) is not { } criu)
        {
            Log.Failed(logger, $"criu '{options.CriuPath}' was not found");
            return CriuKernelFactsOutcome.Failed;
        }

        var kdat = Path.Combine(options.RunDirectory, FileName);
        FileStream held;
        try
        {
            // One crestd at a time (an advisory flock on a file of crestd's own: CRIU removes an empty criu.kdat as stale,
            // so the placeholder cannot be the lock); two binds stacked on criu.kdat would pin the lower one's file.
            held = new FileStream(Path.Combine(options.RunDirectory, LockName), new FileStreamOptions
            {
                Mode = FileMode.OpenOrCreate,
                Access = FileAccess.ReadWrite,
                Share = FileShare.None,
                UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
            });
        }
        catch (IOException)
        {
            return CriuKernelFactsOutcome.Busy;
        }
        catch (UnauthorizedAccessException e)
        {
            Log.Failed(logger, $"{options.RunDirectory}/{LockName} cannot be opened: {e.Message}");
            return CriuKernelFactsOutcome.Failed;
        }

        using (held)
        {
            if (File.Exists(kdat) && new FileInfo(kdat).Length > 0)
            {
                if (File.GetLastWriteTimeUtc(kdat) >= File.GetLastWriteTimeUtc(criu))
                {
                    return CriuKernelFactsOutcome.AlreadyKept;
                }

                if (!IsMountPoint(kdat))
                {
                    // Not one crestd bound: an operator's file, left as it is.
                    return CriuKernelFactsOutcome.AlreadyKept;
                }

                // CRIU was upgraded since: take the old facts off (every bind stacked there) and gather them again.
                for (var i = 0; i < MaxStacked && IsMountPoint(kdat); i++)
                {
                    linux.Unmount(kdat);
                }
            }

            return await GatherAndBindAsync(criu, kdat, ct).ConfigureAwait(false);
        }
    }

    private bool IsMountPoint(string path) => linux.MountsUnder(path).Contains(path, StringComparer.Ordinal);

    private async Task<CriuKernelFactsOutcome> GatherAndBindAsync(string criu, string kdat, CancellationToken ct)
    {
        var started = System.Diagnostics.Stopwatch.StartNew();
        Directory.CreateDirectory(Path.GetDirectoryName(options.CacheFile)!);
        var gathered = options.CacheFile + ".new";
        File.Delete(gathered);
        var probe = new CriuKernelFactsProbeCommand(options.Probe, criu, options.RunDirectory, gathered);
        CommandResult result;
        try
        {
            result = await commands.RunAsync(probe.ToCommandLine(), ct).ConfigureAwait(false);
        }
        catch (CrestException e)
        {
            Log.Failed(logger, e.Message);
            return CriuKernelFactsOutcome.Failed;
        }

        if (result.ExitCode != 0 || !File.Exists(gathered) || new FileInfo(gathered).Length == 0)
        {
            File.Delete(gathered);
            Log.Failed(logger, $"{probe.ToCommandLine()} exited {result.ExitCode}: {result.StandardError.Trim()}");
            return CriuKernelFactsOutcome.Failed;
        }

        File.Move(gathered, options.CacheFile, overwrite: true);
        for (var attempt = 1; ; attempt++)
        {
            // A CRIU that runs meanwhile removes the empty placeholder as a stale cache: made just before the bind.
            if (!File.Exists(kdat))
            {
                using (new FileStream(kdat, new FileStreamOptions { Mode = FileMode.OpenOrCreate, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
                {
                }
            }

            try
            {
                linux.Mount(options.CacheFile, kdat, null, MountOptions.Bind, null);
                break;
            }
            catch (CrestException e)
            {
                if (attempt < 3 && !File.Exists(kdat))
                {
                    continue;
                }

                Log.Failed(logger, e.Message);
                return CriuKernelFactsOutcome.Failed;
            }
        }

        Log.Kept(logger, kdat, options.CacheFile, (long)started.Elapsed.TotalMilliseconds);
        return CriuKernelFactsOutcome.Kept;
    }

    /// <summary>
    /// <c>crestd criu-kernel-facts</c>, run by <see cref="CriuKernelFactsProbeCommand"/>: puts a tmpfs on
    /// <paramref name="runDirectory"/>, has CRIU gather its facts there (<c>criu check</c>) and copies its cache to
    /// <paramref name="output"/>. Refuses to run in the host's mount namespace, where the tmpfs would hide the host's /run.
    /// </summary>
    public static async Task<int> ProbeAsync(string criuPath, string runDirectory, string output, ILinux linux, ICommandRunner commands, TextWriter error, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(linux);
        ArgumentNullException.ThrowIfNull(commands);
        ArgumentNullException.ThrowIfNull(error);
        // unshare execs the probe in the new namespace, so its parent (crestd) is in the old one; pid 1's may be unreadable.
        var own = MountNamespaceOf("self");
        var parent = MountNamespaceOf(ParentPid().ToString(System.Globalization.CultureInfo.InvariantCulture));
        if (own is null || parent is null || own == parent)
        {
            await error.WriteLineAsync($"criu-kernel-facts: refusing to run in its parent's mount namespace ({own ?? "unknown"}): it would hide {runDirectory}; crestd runs it under unshare --mount").ConfigureAwait(false);
            return 2;
        }

        var full = Path.GetFullPath(output);
        if (full.StartsWith(Path.TrimEndingDirectorySeparator(Path.GetFullPath(runDirectory)) + "/", StringComparison.Ordinal))
        {
            await error.WriteLineAsync($"criu-kernel-facts: --out {output} lies under {runDirectory}, which the probe hides").ConfigureAwait(false);
            return 2;
        }

        linux.Mount("crest-criu-kernel-facts", runDirectory, "tmpfs", MountOptions.None, "size=1m,mode=0755");
        var check = await commands.RunAsync(new CommandLine(criuPath, ["check"]), ct).ConfigureAwait(false);
        var cache = Path.Combine(runDirectory, FileName);
        if (!File.Exists(cache))
        {
            await error.WriteLineAsync($"criu-kernel-facts: criu check (exit {check.ExitCode}) left no {cache}: {check.StandardError.Trim()}").ConfigureAwait(false);
            return 1;
        }

        File.Copy(cache, full, overwrite: true);
        return 0;
    }

    private static string? MountNamespaceOf(string pid)
    {
        try
        {
            return new FileInfo($"/proc/{pid}/ns/mnt").LinkTarget;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>This process's parent, from /proc/self/stat (the field after the state, past the command's parenthesis).</summary>
    private static int ParentPid()
    {
        var stat = File.ReadAllText("/proc/self/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return int.Parse(fields[1], System.Globalization.CultureInfo.InvariantCulture);
    }

    private static partial class Log
    {
        [LoggerMessage(460, LogLevel.Information, "CRIU's kernel facts are kept for this boot: {Cache} bound onto {Kdat} in {Milliseconds} ms (this node's /run is not a tmpfs, where CRIU would keep them itself)")]
        public static partial void Kept(ILogger logger, string kdat, string cache, long milliseconds);

        [LoggerMessage(461, LogLevel.Warning, "CRIU's kernel facts could not be kept, so each CRIU run gathers them again (about 80 ms): {Problem}")]
        public static partial void Failed(ILogger logger, string problem);
    }
}
