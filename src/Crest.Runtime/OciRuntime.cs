using System.Globalization;
using System.Text;
using System.Text.Json;
using Crest.Core;
using Crest.Linux;

namespace Crest.Runtime;

/// <summary>
/// How long conmon is given: to answer on its sync pipe (the runtime's create, or CRIU's restore, runs meanwhile), then
/// for its first process to exit (it forks the monitor and exits at once, so one still there after this hangs).
/// </summary>
public sealed record ConmonTimeouts(TimeSpan SyncPipe, TimeSpan FirstProcessExit)
{
    public static ConmonTimeouts Default { get; } = new(TimeSpan.FromMinutes(2), TimeSpan.FromSeconds(10));
}

/// <summary>conmon + runc/crun, as CRI-O and Podman run containers.</summary>
/// <param name="timeouts">what a conmon that hangs is given before it is killed; <see cref="ConmonTimeouts.Default"/> when null</param>
public sealed class ConmonOciRuntime(OciRuntimeBinding binding, ICommandRunner commands, ILinux linux, ConmonTimeouts? timeouts = null) : IOciRuntime
{
    private readonly ConmonTimeouts _timeouts = timeouts ?? ConmonTimeouts.Default;

    /// <summary>How long a timed-out exec's runtime client has to reap the killed command before it is killed too.</summary>
    private static readonly TimeSpan ExecKillGrace = TimeSpan.FromSeconds(5);

    public RuntimeHandlerOptions Handler => binding.Handler;

    public OciRuntimeBinding Binding => binding;

    public Task<int> CreateAsync(ConmonCreateOptions options, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(options);
        return RunConmonAsync(options, conmon => options.ToArguments(conmon, binding), ct);
    }

    public Task<int> RestoreAsync(RuncRestoreOptions options, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(options);
        return RunConmonAsync(options.Monitor, conmon => [.. options.Monitor.ToArguments(conmon, binding), .. options.ConmonArguments()], ct);
    }

    /// <summary>Starts conmon with <paramref name="arguments"/> and waits for the pid (or the runtime's error) on the sync pipe.</summary>
    private async Task<int> RunConmonAsync(ConmonCreateOptions options, Func<string, IReadOnlyList<string>> arguments, CancellationToken ct)
    {
        Directory.CreateDirectory(binding.ExitDir);
        Directory.CreateDirectory(options.PersistDir);
        Directory.CreateDirectory(binding.SocketDir);
        var conmon = ExecutableSearch.Resolve(binding.ConmonPath)
            ?? throw new CrestException(ErrorKind.FailedPrecondition, $"conmon '{binding.ConmonPath}' was not found; install it (make deps)");
        // A pid file an earlier conmon of this container left must not be taken for this one's monitor (KillConmon).
        if (File.Exists(options.ConmonPidFile))
        {
            File.Delete(options.ConmonPidFile);
        }

        using var sync = new Pipe();
        const int SyncFd = 3;
        var env = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["PATH"] = Environment.GetEnvironmentVariable("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin",
            ["_OCI_SYNCPIPE"] = SyncFd.ToString(CultureInfo.InvariantCulture),
        };
        var child = ChildProcess.Spawn(conmon, arguments(conmon),
            [ChildFd.Null(0), ChildFd.Null(1), ChildFd.Null(2), new ChildFd(SyncFd, sync.WriteFd)], env);
        sync.CloseWrite();
        // conmon forks: the first process exits once its monitor runs; the sync pipe carries {"data": pid} or an error.
        await using var reader = sync.OpenReader();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(_timeouts.SyncPipe);
        var buffer = new byte[64 * 1024];
        var text = new StringBuilder();
        var unanswered = false;
        var firstHung = false;
        try
        {
            while (!text.ToString().Contains('}', StringComparison.Ordinal))
            {
                // A read of a pipe is not cancelled by its token once it blocks: the wait for it is, and the read ends
                // once the pipe's writers are killed (KillConmon).
                var n = await reader.ReadAsync(buffer, CancellationToken.None).AsTask().WaitAsync(timeout.Token).ConfigureAwait(false);
                if (n == 0)
                {
                    break;
                }

                text.Append(Encoding.UTF8.GetString(buffer, 0, n));
            }
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            unanswered = true;
        }
        finally
        {
            // Bounded too: a first process that never exits would otherwise hold CreateContainer, StartContainer or a
            // restore for ever, whatever the sync pipe said.
            firstHung = !await ExitedWithinAsync(child, _timeouts.FirstProcessExit).ConfigureAwait(false);
            if (firstHung || unanswered)
            {
                KillConmon(options, firstHung ? child : null);
            }
        }

        if (unanswered)
        {
            throw new CrestException(ErrorKind.DeadlineExceeded,
                $"container {options.ContainerId}: conmon did not report the container's pid within {_timeouts.SyncPipe.TotalSeconds:0.###} s "
                + "(the runtime's create or CRIU's restore was still running); conmon and what it started were killed. Look for what hangs in "
                + $"{Path.GetFileName(binding.RuntimePath)} (a hook, a mount, a frozen cgroup; the node's journal), then create the container again");
        }

        if (firstHung)
        {
            throw new CrestException(ErrorKind.Internal,
                $"container {options.ContainerId}: conmon's first process (pid {child.Pid.ToString(CultureInfo.InvariantCulture)}) did not exit within "
                + $"{_timeouts.FirstProcessExit.TotalSeconds:0.###} s once the sync pipe had answered or closed (conmon forks its monitor and exits at once); "
                + $"it and its monitor were killed. Check that '{conmon}' is a working conmon ('{conmon} --version'), then create the container again");
        }

        var message = text.ToString();
        var end = message.IndexOf('}', StringComparison.Ordinal);
        if (end < 0)
        {
            throw new CrestException(ErrorKind.Internal, $"container {options.ContainerId}: conmon exited without reporting a pid ({message.Trim()})");
        }

        using var doc = JsonDocument.Parse(message[..(end + 1)]);
        var data = doc.RootElement.TryGetProperty("data", out var d) ? d.GetInt32() : -1;
        if (data <= 0)
        {
            var why = doc.RootElement.TryGetProperty("message", out var m) ? m.GetString() : "no message";
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {options.ContainerId}: the OCI runtime could not create it: {why}");
        }

        return data;
    }

    /// <summary>Whether conmon's first process exits (and is reaped) within <paramref name="limit"/>.</summary>
    private static async Task<bool> ExitedWithinAsync(ChildProcess first, TimeSpan limit)
    {
        using var bound = new CancellationTokenSource(limit);
        try
        {
            await first.WaitAsync(bound.Token).ConfigureAwait(false);
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    /// <summary>
    /// Kills a conmon that hangs: the monitor its first process named in the conmon pid file, with the runtime (or CRIU)
    /// it started, then (when it has not exited) the first process and whatever is still below it, which is reaped.
    /// </summary>
    private void KillConmon(ConmonCreateOptions options, ChildProcess? first)
    {
        // Deleted before conmon started: a pid found there is this conmon's monitor.
        if (ReadPid(options.ConmonPidFile) is { } monitor && monitor != first?.Pid)
        {
            linux.KillProcessTree(monitor);
        }

        if (first is not null)
        {
            linux.KillProcessTree(first.Pid);
            first.KillAndReap();
        }
    }

    public Task StartAsync(RuncStartOptions options, CancellationToken ct) => RunOrThrowAsync(options, ct);

    public async Task KillAsync(RuncKillOptions options, CancellationToken ct)
    {
        var r = await RunAsync(options, ct).ConfigureAwait(false);
        if (r.ExitCode != 0 && !NotRunning(r.StandardError))
        {
            throw Failed(options, r);
        }
    }

    public async Task DeleteAsync(RuncDeleteOptions options, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!Directory.Exists(Path.Combine(binding.RuntimeRoot, options.ContainerId)))
        {
            // runc and crun keep a container's state in <root>/<id>: without it there is nothing to delete (already deleted at stop).
            return;
        }

        var r = await RunAsync(options, ct).ConfigureAwait(false);
        if (r.ExitCode != 0 && !options.Force && !NotRunning(r.StandardError))
        {
            // Still running (or refused for another reason): the forced delete kills it first, as this call promises.
            options = options with { Force = true };
            r = await RunAsync(options, ct).ConfigureAwait(false);
        }

        if (r.ExitCode != 0 && !NotRunning(r.StandardError))
        {
            throw Failed(options, r);
        }
    }

    public async Task<OciState?> StateAsync(RuncStateOptions options, CancellationToken ct)
    {
        var r = await RunAsync(options, ct).ConfigureAwait(false);
        if (r.ExitCode != 0)
        {
            return null;
        }

        using var doc = JsonDocument.Parse(r.StandardOutput);
        return new OciState(doc.RootElement.GetProperty("status").GetString() ?? "unknown", doc.RootElement.TryGetProperty("pid", out var p) ? p.GetInt32() : 0);
    }

    public Task UpdateAsync(RuncUpdateOptions options, CancellationToken ct) => RunOrThrowAsync(options, ct);

    public Task PauseAsync(RuncPauseOptions options, CancellationToken ct) => RunOrThrowAsync(options, ct);

    public Task ResumeAsync(RuncResumeOptions options, CancellationToken ct) => RunOrThrowAsync(options, ct);

    public Task CheckpointAsync(RuncCheckpointOptions options, CancellationToken ct) => RunOrThrowAsync(options, ct);

    /// <summary>The file in a lazy checkpoint's work directory that keeps the runtime's standard error.</summary>
    public const string LazyCheckpointStderr = "runtime-checkpoint.stderr";

    public async Task<LazyCheckpoint> StartLazyCheckpointAsync(RuncCheckpointOptions options, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.LazyPageServer is not { } server)
        {
            throw new ArgumentException("a lazy checkpoint needs a page server address", nameof(options));
        }

        const int StatusFd = 3;
        using var status = new Pipe();
        options = options with { StatusFd = StatusFd };
        // runc's own words (a refusal before CRIU runs leaves no dump.log) go to a file beside dump.log.
        var stderrPath = Path.Combine(options.WorkPath, LazyCheckpointStderr);
        ChildProcess runc;
        using (var stderr = new FileStream(stderrPath, new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
        {
            // A session of its own, so runc and the CRIU it starts are killed together (LazyCheckpoint.KillAsync).
            runc = ChildProcess.Spawn(binding.RuntimePath, [binding.RuntimePath, .. options.Arguments(binding.RuntimeRoot)],
                [ChildFd.Null(0), ChildFd.Null(1), new ChildFd(2, (int)stderr.SafeFileHandle.DangerousGetHandle()), new ChildFd(StatusFd, status.WriteFd)], newSession: true);
        }

        status.CloseWrite();
        var lazy = new LazyCheckpoint(runc, options.WorkPath, server);
        await using var reader = status.OpenReader();
        var one = new byte[1];
        int read;
        try
        {
            // CRIU writes one byte once the images are out and the page server listens; EOF means it ended first.
            read = await Task.Run(() => reader.Read(one, 0, 1), CancellationToken.None).WaitAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            await lazy.KillAsync().ConfigureAwait(false);
            throw;
        }

        if (read != 1)
        {
            var code = await lazy.Exit.ConfigureAwait(false);
            var said = File.Exists(stderrPath) ? File.ReadLines(stderrPath).Where(l => l.Length > 0).TakeLast(5).ToList() : [];
            throw new CrestException(ErrorKind.Internal,
                $"container {options.ContainerId}: {Path.GetFileName(binding.RuntimePath)} {options.Verb} exited with code {code.ToString(CultureInfo.InvariantCulture)} before its page server listened"
                + (said.Count == 0 ? "" : $"; it said ({stderrPath}):\n" + string.Join('\n', said.Select(l => "  " + l.Trim()))));
        }

        // The work directory becomes the archive; runc keeps its descriptor of the unlinked file.
        File.Delete(stderrPath);
        // CRIU's page server accepts the target with Nagle's algorithm on, and GnuTLS writes each message of its
        // handshake flight with a send of its own: the second waits for the target to acknowledge the first, which a
        // delayed ACK holds back 40 ms. The accepted socket inherits TCP_NODELAY from the listener, which listens from
        // now on and is accepted only once the target restores, after this returns.
        var colon = server.LastIndexOf(':');
        try
        {
            lazy.NagleKept = colon > 0 && int.TryParse(server.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var port)
                ? linux.SetListenerNoDelay(runc.Pid, port)
                : $"the page server address {server} has no port";
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Only a speed-up: the page server serves either way, and the caller must get it to end it.
            lazy.NagleKept = e.Message;
        }

        return lazy;
    }

    public async Task<RuncExecResult> ExecAsync(RuncExecOptions options, TimeSpan timeout, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(options);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        if (timeout > TimeSpan.Zero)
        {
            deadline.CancelAfter(timeout);
        }

        // The runtime's client is stopped only as a last resort: it is the command's parent, and while it lives it reaps
        // the command we kill. Killed first, it would leave the command to the container's init, which need not reap it,
        // and a zombie still shows in the container's process list.
        using var lastResort = new CancellationTokenSource();
        var run = RunAsync(options, lastResort.Token);
        try
        {
            var result = await run.WaitAsync(deadline.Token).ConfigureAwait(false);
            return new RuncExecResult(result.ExitCode, result.StandardOutput, result.StandardError, TimedOut: false);
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested)
        {
            await KillExecAsync(options.PidFile, run, lastResort).ConfigureAwait(false);
            if (ct.IsCancellationRequested)
            {
                throw;
            }

            return new RuncExecResult(-1, "", "", TimedOut: true);
        }
    }

    /// <summary>
    /// Kills a timed-out exec's command and every process it started, by the pid the runtime wrote, and waits (bounded)
    /// for the runtime's client to reap it and exit; the client itself is killed only if it does not.
    /// </summary>
    private async Task KillExecAsync(string pidFile, Task<CommandResult> run, CancellationTokenSource lastResort)
    {
        // A monotonic clock: a wall clock set back while waiting would stretch the grace.
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        var killed = false;
        while (!run.IsCompleted && System.Diagnostics.Stopwatch.GetElapsedTime(started) < ExecKillGrace)
        {
            // The pid file appears once the command has started; a timeout shorter than the start finds none yet. The
            // tree is killed once (KillProcessTree makes its own passes for late forks): once the client has reaped the
            // command, its pid may belong to another process.
            if (!killed && ReadPid(pidFile) is { } pid)
            {
                linux.KillProcessTree(pid);
                killed = true;
            }

            await Task.WhenAny(run, Task.Delay(TimeSpan.FromMilliseconds(50), CancellationToken.None)).ConfigureAwait(false);
        }

        await lastResort.CancelAsync().ConfigureAwait(false);
        try
        {
            await run.ConfigureAwait(false);
        }
        catch (Exception e) when (e is OperationCanceledException or CrestException)
        {
            // Killed or gone: what matters is that it no longer runs.
        }
    }

    private static int? ReadPid(string pidFile)
    {
        try
        {
            return int.TryParse(File.ReadAllText(pidFile).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && pid > 0 ? pid : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    public IStreamSession StartExec(RuncExecOptions options, StreamOptions streams)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(streams);
        var env = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["PATH"] = Environment.GetEnvironmentVariable("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin",
        };
        try
        {
            return RuncExecSession.Start(binding.RuntimePath, options.Arguments(binding.RuntimeRoot), options, streams, env);
        }
        catch (IOException e)
        {
            throw new CrestException(ErrorKind.Internal, $"container {options.ContainerId}: {Path.GetFileName(binding.RuntimePath)} exec could not be started: {e.Message}", e);
        }
    }

    public async Task<IStreamSession> AttachAsync(ConmonAttachOptions options, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(options);
        return await ConmonAttachSession.ConnectAsync(options, ct).ConfigureAwait(false);
    }

    /// <summary>The one place a runc command becomes a process: the bound binary, its root, the command's argv.</summary>
    private Task<CommandResult> RunAsync(RuncCommand command, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(command);
        return commands.RunAsync(new CommandLine(binding.RuntimePath, command.Arguments(binding.RuntimeRoot)) { StandardInput = command.StandardInput }, ct);
    }

    private async Task RunOrThrowAsync(RuncCommand command, CancellationToken ct)
    {
        var r = await RunAsync(command, ct).ConfigureAwait(false);
        if (r.ExitCode != 0)
        {
            throw Failed(command, r);
        }
    }

    private CrestException Failed(RuncCommand command, CommandResult r) =>
        new(ErrorKind.Internal, $"container {command.ContainerId}: {Path.GetFileName(binding.RuntimePath)} {command.Verb} failed: {Trim(r.StandardError)}");

    private static bool NotRunning(string stderr) =>
        stderr.Contains("does not exist", StringComparison.OrdinalIgnoreCase) || stderr.Contains("not running", StringComparison.OrdinalIgnoreCase)
        || stderr.Contains("no such", StringComparison.OrdinalIgnoreCase) || stderr.Contains("process already finished", StringComparison.OrdinalIgnoreCase);

    private static string Trim(string s)
    {
        s = s.Trim();
        return s.Length > 500 ? s[..500] : s;
    }
}
