using System.Text.Json;
using Crest.Core;
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

        var runtime = runtimes.For(c.RuntimeHandler);
        var options = await PrepareExecAsync(c, command, tty: false, ct).ConfigureAwait(false);
        try
        {
            // The runtime kills a timed-out command by its pid file while its own client still lives to reap it.
            var result = await runtime.ExecAsync(options, timeout, ct).ConfigureAwait(false);
            return result.TimedOut
                ? throw new CrestException(ErrorKind.DeadlineExceeded,
                    $"command {string.Join(' ', command)} in container {c.Id} did not finish within its {timeout.TotalSeconds:0.###} s timeout and was killed")
                : new ExecResult(System.Text.Encoding.UTF8.GetBytes(result.StandardOutput), System.Text.Encoding.UTF8.GetBytes(result.StandardError), result.ExitCode);
        }
        finally
        {
            File.Delete(options.PidFile);
            File.Delete(options.ProcessFile);
        }
    }

    /// <summary>
    /// The runtime's exec of <paramref name="command"/> in <paramref name="c"/>: the container's own process from its
    /// config.json (user, groups, capabilities, no_new_privs, cwd, environment) with the command and terminal replaced,
    /// written to a process file the session or ExecSync removes.
    /// </summary>
    private async Task<RuncExecOptions> PrepareExecAsync(ContainerRecord c, IReadOnlyList<string> command, bool tty, CancellationToken ct)
    {
        var bundle = bundles.For(c.Id);
        var config = bundle.ConfigJson;
        RuntimeSpec? spec;
        try
        {
            spec = await RuntimeSpecFile.ReadAsync(config, ct).ConfigureAwait(false);
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
        var state = bundle.StateDir;
        Directory.CreateDirectory(state);
        var name = $"exec-{Guid.NewGuid():N}";
        var processFile = Path.Combine(state, name + ".json");
        await File.WriteAllBytesAsync(processFile, JsonSerializer.SerializeToUtf8Bytes(process, RuntimeSpecJson.Default.SpecProcess), ct).ConfigureAwait(false);
        return new RuncExecOptions
        {
            ContainerId = c.Id,
            ProcessFile = processFile,
            PidFile = Path.Combine(state, name + ".pid"),
            Tty = tty,
        };
    }
}
