using System.Globalization;
using System.Text.Json;
using Crest.Core;
using Crest.Linux;
using Crest.Oci;

namespace Crest.Runtime;

// ExecSync, and the process every exec runs (ExecSync and streaming Exec alike).
public sealed partial class ContainerService
{
    /// <summary>The result of a command run to completion inside a container.</summary>
    public sealed record ExecResult(byte[] Stdout, byte[] Stderr, int ExitCode);

    /// <summary>
    /// Runs a command in a running container and waits for it (CRI ExecSync), as the container's user with its
    /// groups, capabilities and environment. A timeout, or the caller going away, kills the command and every
    /// process it started (not only the runtime's client), and a timeout says so: an exec probe that timed out
    /// leaves nothing behind.
    /// </summary>
    public async Task<ExecResult> ExecSyncAsync(string idOrPrefix, IReadOnlyList<string> command, TimeSpan timeout, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(command);
        if (command.Count == 0)
        {
            throw new CrestException(ErrorKind.InvalidArgument, "ExecSync needs a command");
        }

        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        if (c.State != ContainerState.Running)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {c.Id} is {c.State}; commands run only in a running container");
        }

        var options = await PrepareExecAsync(c, command, tty: false, ct).ConfigureAwait(false);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        if (timeout > TimeSpan.Zero)
        {
            deadline.CancelAfter(timeout);
        }

        // The runtime's client is stopped only as a last resort: it is the command's parent, and while it lives it reaps
        // the command we kill. Killed first, it would leave the command to the container's init, which need not reap it,
        // and a zombie still shows in the container's process list.
        using var lastResort = new CancellationTokenSource();
        var argv = options.ToArguments();
        var run = commands.RunAsync(new CommandLine(argv[0], [.. argv.Skip(1)]), lastResort.Token);
        try
        {
            var result = await run.WaitAsync(deadline.Token).ConfigureAwait(false);
            return new ExecResult(System.Text.Encoding.UTF8.GetBytes(result.StandardOutput), System.Text.Encoding.UTF8.GetBytes(result.StandardError), result.ExitCode);
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested)
        {
            await KillExecAsync(options.PidFile, run, lastResort).ConfigureAwait(false);
            if (ct.IsCancellationRequested)
            {
                throw;
            }

            throw new CrestException(ErrorKind.DeadlineExceeded,
                $"command {string.Join(' ', command)} in container {c.Id} did not finish within its {timeout.TotalSeconds:0.###} s timeout and was killed");
        }
        finally
        {
            File.Delete(options.PidFile);
            File.Delete(options.ProcessFile);
        }
    }

    /// <summary>
    /// Kills a timed-out exec's command and every process it started, by the pid the runtime wrote, and waits (bounded)
    /// for the runtime's client to reap it and exit; the client itself is killed only if it does not.
    /// </summary>
    private async Task KillExecAsync(string pidFile, Task<CommandResult> run, CancellationTokenSource lastResort)
    {
        var giveUp = DateTime.UtcNow + ExecKillGrace;
        while (!run.IsCompleted && DateTime.UtcNow < giveUp)
        {
            // The pid file appears once the command has started; a timeout shorter than the start finds none yet.
            if (ReadPid(pidFile) is { } pid)
            {
                linux.KillProcessTree(pid);
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

    /// <summary>How long a timed-out exec's runtime client has to reap the killed command before it is killed too.</summary>
    private static readonly TimeSpan ExecKillGrace = TimeSpan.FromSeconds(5);

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

    /// <summary>
    /// The runtime's exec of <paramref name="command"/> in <paramref name="c"/>: the container's own process from its
    /// config.json (user, groups, capabilities, no_new_privs, cwd, environment) with the command and terminal replaced,
    /// written to a process file the session or ExecSync removes.
    /// </summary>
    private async Task<RuncExecOptions> PrepareExecAsync(ContainerRecord c, IReadOnlyList<string> command, bool tty, CancellationToken ct)
    {
        var handler = sandboxes.Handler(c.RuntimeHandler);
        var config = Path.Combine(layout.ContainerDir(c.Id), "bundle", "config.json");
        RuntimeSpec? spec;
        try
        {
            spec = JsonSerializer.Deserialize(await File.ReadAllBytesAsync(config, ct).ConfigureAwait(false), RuntimeSpecJson.Default.RuntimeSpec);
        }
        catch (Exception e) when (e is IOException or JsonException)
        {
            throw new CrestException(ErrorKind.Internal, $"container {c.Id}'s runtime spec {config} cannot be read ({e.Message}); the container cannot run commands", e);
        }

        var process = (spec?.Process ?? throw new CrestException(ErrorKind.Internal, $"container {c.Id}'s runtime spec {config} has no process")) with
        {
            Args = command,
            Terminal = tty,
            // As containerd does for a terminal exec.
            Env = tty ? [.. spec.Process.Env.Where(e => !e.StartsWith("TERM=", StringComparison.Ordinal)), "TERM=xterm"] : spec.Process.Env,
        };
        var state = layout.ContainerStateDir(c.Id);
        Directory.CreateDirectory(state);
        var name = $"exec-{Guid.NewGuid():N}";
        var processFile = Path.Combine(state, name + ".json");
        await File.WriteAllBytesAsync(processFile, JsonSerializer.SerializeToUtf8Bytes(process, RuntimeSpecJson.Default.SpecProcess), ct).ConfigureAwait(false);
        return new RuncExecOptions
        {
            RuntimePath = ExecutableSearch.Resolve(handler.Path) ?? handler.Path,
            RuntimeRoot = layout.RuntimeRoot(handler.Name),
            ContainerId = c.Id,
            ProcessFile = processFile,
            PidFile = Path.Combine(state, name + ".pid"),
            Tty = tty,
        };
    }
}
