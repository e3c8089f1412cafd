using System.Globalization;
using System.Text;
using System.Text.Json;
using Crest.Core;
using Crest.Linux;

namespace Crest.Runtime;

/// <summary>How conmon should create one container (typed; argv is built from it in one place).</summary>
public sealed record ConmonCreateOptions
{
    public required string ContainerId { get; init; }
    public required string Name { get; init; }
    public required string RuntimePath { get; init; }
    public required string RuntimeRoot { get; init; }
    public required string Bundle { get; init; }
    public required string ContainerPidFile { get; init; }
    public required string ConmonPidFile { get; init; }
    public required string ExitDir { get; init; }
    public required string PersistDir { get; init; }
    public required string SocketDir { get; init; }
    /// <summary>CRI log file (k8s-file format); empty for none.</summary>
    public string LogPath { get; init; } = "";
    public bool Terminal { get; init; }
    public bool Stdin { get; init; }
    public bool SystemdCgroup { get; init; }

    /// <summary>When set, conmon runs <c>runtime restore --image-path</c> from this CRIU image directory instead of <c>create</c>.</summary>
    public string? RestoreImagePath { get; init; }

    /// <summary>Extra options for <c>runtime restore</c> (conmon's --runtime-opt), such as --file-locks.</summary>
    public IReadOnlyList<string> RestoreOptions { get; init; } = [];

    public IReadOnlyList<string> ToArguments(string conmonPath)
    {
        var args = new List<string>
        {
            conmonPath, "--api-version", "1",
            "-c", ContainerId, "-u", ContainerId, "-n", Name,
            "-r", RuntimePath, "-b", Bundle,
            "-p", ContainerPidFile, "-P", ConmonPidFile,
            "--exit-dir", ExitDir, "--persist-dir", PersistDir, "--socket-dir-path", SocketDir,
            "--runtime-arg", $"--root={RuntimeRoot}",
            "-l", LogPath.Length > 0 ? $"k8s-file:{LogPath}" : "none:",
            "--log-level", "error",
        };
        if (Terminal)
        {
            args.Add("-t");
        }

        if (Stdin)
        {
            args.Add("-i");
        }

        if (SystemdCgroup)
        {
            args.Add("-s");
        }

        if (RestoreImagePath is { } restore)
        {
            args.Add("--restore");
            args.Add(restore);
            foreach (var option in RestoreOptions)
            {
                args.Add("--runtime-opt");
                args.Add(option);
            }
        }

        return args;
    }
}

/// <summary>How to run <c>runc checkpoint</c> (always leave-running: the CRI semantics).</summary>
public sealed record CheckpointCommand
{
    public required string RuntimePath { get; init; }
    public required string RuntimeRoot { get; init; }
    public required string ContainerId { get; init; }
    /// <summary>Where CRIU writes its images.</summary>
    public required string ImagePath { get; init; }
    /// <summary>Where CRIU writes dump.log and stats-dump.</summary>
    public required string WorkPath { get; init; }
    public bool FileLocks { get; init; } = true;
    public bool TcpEstablished { get; init; }

    public IReadOnlyList<string> ToArguments()
    {
        var args = new List<string> { $"--root={RuntimeRoot}", "checkpoint", "--leave-running", "--image-path", ImagePath, "--work-path", WorkPath };
        if (FileLocks)
        {
            args.Add("--file-locks");
        }

        if (TcpEstablished)
        {
            args.Add("--tcp-established");
        }

        args.Add(ContainerId);
        return args;
    }
}

/// <summary>The state `runc state` reports.</summary>
public sealed record OciState(string Status, int Pid);

/// <summary>One OCI runtime (runc or crun) driven through conmon, so stdio, logs and exit codes outlive crestd.</summary>
public interface IOciRuntime
{
    /// <summary>Creates the container under a new conmon and returns its init pid.</summary>
    Task<int> CreateAsync(ConmonCreateOptions options, CancellationToken ct);

    Task StartAsync(string runtimePath, string runtimeRoot, string id, CancellationToken ct);

    Task KillAsync(string runtimePath, string runtimeRoot, string id, int signal, CancellationToken ct);

    /// <summary>Deletes the runtime's record of the container (forcefully); a container runc does not know is not an error.</summary>
    Task DeleteAsync(string runtimePath, string runtimeRoot, string id, CancellationToken ct);

    Task<OciState?> StateAsync(string runtimePath, string runtimeRoot, string id, CancellationToken ct);

    /// <summary>Applies new cgroup limits to a running container (<c>runc update --resources -</c>).</summary>
    Task UpdateAsync(string runtimePath, string runtimeRoot, string id, string resourcesJson, CancellationToken ct);

    /// <summary>Freezes every process of the container (cgroup freezer).</summary>
    Task PauseAsync(string runtimePath, string runtimeRoot, string id, CancellationToken ct);

    Task ResumeAsync(string runtimePath, string runtimeRoot, string id, CancellationToken ct);

    /// <summary>Dumps the container with CRIU and leaves it running; a failure carries the runtime's error output.</summary>
    Task CheckpointAsync(CheckpointCommand command, CancellationToken ct);

    /// <summary>Starts a command in a running container with live stdio (the streaming Exec).</summary>
    IStreamSession StartExec(RuncExecOptions options, StreamOptions streams);

    /// <summary>Connects to the stdio of a container's main process through its monitor (the streaming Attach).</summary>
    Task<IStreamSession> AttachAsync(ConmonAttachOptions options, CancellationToken ct);
}

/// <summary>conmon + runc/crun, as CRI-O and Podman run containers.</summary>
public sealed class ConmonOciRuntime(string conmonPath, ICommandRunner commands) : IOciRuntime
{
    private static readonly TimeSpan CreateTimeout = TimeSpan.FromMinutes(2);

    public async Task<int> CreateAsync(ConmonCreateOptions options, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(options);
        Directory.CreateDirectory(options.ExitDir);
        Directory.CreateDirectory(options.PersistDir);
        Directory.CreateDirectory(options.SocketDir);
        var conmon = ExecutableSearch.Resolve(conmonPath)
            ?? throw new CrestException(ErrorKind.FailedPrecondition, $"conmon '{conmonPath}' was not found; install it (make deps)");
        using var sync = new Pipe();
        const int SyncFd = 3;
        var env = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["PATH"] = Environment.GetEnvironmentVariable("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin",
            ["_OCI_SYNCPIPE"] = SyncFd.ToString(CultureInfo.InvariantCulture),
        };
        var child = ChildProcess.Spawn(conmon, options.ToArguments(conmon),
            [ChildFd.Null(0), ChildFd.Null(1), ChildFd.Null(2), new ChildFd(SyncFd, sync.WriteFd)], env);
        sync.CloseWrite();
        // conmon forks: the first process exits once its monitor runs; the sync pipe carries {"data": pid} or an error.
        await using var reader = sync.OpenReader();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(CreateTimeout);
        var buffer = new byte[64 * 1024];
        var text = new StringBuilder();
        try
        {
            while (!text.ToString().Contains('}', StringComparison.Ordinal))
            {
                var n = await reader.ReadAsync(buffer, timeout.Token).ConfigureAwait(false);
                if (n == 0)
                {
                    break;
                }

                text.Append(Encoding.UTF8.GetString(buffer, 0, n));
            }
        }
        finally
        {
            await child.WaitAsync(CancellationToken.None).ConfigureAwait(false);
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

    public async Task StartAsync(string runtimePath, string runtimeRoot, string id, CancellationToken ct)
    {
        var r = await commands.RunAsync(new CommandLine(runtimePath, [$"--root={runtimeRoot}", "start", id]), ct).ConfigureAwait(false);
        if (r.ExitCode != 0)
        {
            throw new CrestException(ErrorKind.Internal, $"container {id}: {Path.GetFileName(runtimePath)} start failed: {Trim(r.StandardError)}");
        }
    }

    public async Task KillAsync(string runtimePath, string runtimeRoot, string id, int signal, CancellationToken ct)
    {
        var r = await commands.RunAsync(new CommandLine(runtimePath, [$"--root={runtimeRoot}", "kill", "--all", id, signal.ToString(CultureInfo.InvariantCulture)]), ct).ConfigureAwait(false);
        if (r.ExitCode != 0 && !NotRunning(r.StandardError))
        {
            throw new CrestException(ErrorKind.Internal, $"container {id}: {Path.GetFileName(runtimePath)} kill {signal} failed: {Trim(r.StandardError)}");
        }
    }

    public async Task DeleteAsync(string runtimePath, string runtimeRoot, string id, CancellationToken ct)
    {
        var r = await commands.RunAsync(new CommandLine(runtimePath, [$"--root={runtimeRoot}", "delete", "--force", id]), ct).ConfigureAwait(false);
        if (r.ExitCode != 0 && !NotRunning(r.StandardError))
        {
            throw new CrestException(ErrorKind.Internal, $"container {id}: {Path.GetFileName(runtimePath)} delete failed: {Trim(r.StandardError)}");
        }
    }

    public async Task<OciState?> StateAsync(string runtimePath, string runtimeRoot, string id, CancellationToken ct)
    {
        var r = await commands.RunAsync(new CommandLine(runtimePath, [$"--root={runtimeRoot}", "state", id]), ct).ConfigureAwait(false);
        if (r.ExitCode != 0)
        {
            return null;
        }

        using var doc = JsonDocument.Parse(r.StandardOutput);
        return new OciState(doc.RootElement.GetProperty("status").GetString() ?? "unknown", doc.RootElement.TryGetProperty("pid", out var p) ? p.GetInt32() : 0);
    }

    public async Task UpdateAsync(string runtimePath, string runtimeRoot, string id, string resourcesJson, CancellationToken ct)
    {
        var r = await commands.RunAsync(new CommandLine(runtimePath, [$"--root={runtimeRoot}", "update", "--resources", "-", id]) { StandardInput = resourcesJson }, ct).ConfigureAwait(false);
        if (r.ExitCode != 0)
        {
            throw new CrestException(ErrorKind.Internal, $"container {id}: {Path.GetFileName(runtimePath)} update failed: {Trim(r.StandardError)}");
        }
    }

    public Task PauseAsync(string runtimePath, string runtimeRoot, string id, CancellationToken ct) =>
        RunOrThrowAsync(runtimePath, [$"--root={runtimeRoot}", "pause", id], id, "pause", ct);

    public Task ResumeAsync(string runtimePath, string runtimeRoot, string id, CancellationToken ct) =>
        RunOrThrowAsync(runtimePath, [$"--root={runtimeRoot}", "resume", id], id, "resume", ct);

    public Task CheckpointAsync(CheckpointCommand command, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(command);
        return RunOrThrowAsync(command.RuntimePath, command.ToArguments(), command.ContainerId, "checkpoint", ct);
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
            return RuncExecSession.Start(options, streams, env);
        }
        catch (IOException e)
        {
            throw new CrestException(ErrorKind.Internal, $"container {options.ContainerId}: {Path.GetFileName(options.RuntimePath)} exec could not be started: {e.Message}", e);
        }
    }

    public async Task<IStreamSession> AttachAsync(ConmonAttachOptions options, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(options);
        return await ConmonAttachSession.ConnectAsync(options, ct).ConfigureAwait(false);
    }

    private async Task RunOrThrowAsync(string runtimePath, IReadOnlyList<string> args, string id, string verb, CancellationToken ct)
    {
        var r = await commands.RunAsync(new CommandLine(runtimePath, args), ct).ConfigureAwait(false);
        if (r.ExitCode != 0)
        {
            throw new CrestException(ErrorKind.Internal, $"container {id}: {Path.GetFileName(runtimePath)} {verb} failed: {Trim(r.StandardError)}");
        }
    }

    private static bool NotRunning(string stderr) =>
        stderr.Contains("does not exist", StringComparison.OrdinalIgnoreCase) || stderr.Contains("not running", StringComparison.OrdinalIgnoreCase)
        || stderr.Contains("no such", StringComparison.OrdinalIgnoreCase) || stderr.Contains("process already finished", StringComparison.OrdinalIgnoreCase);

    private static string Trim(string s)
    {
        s = s.Trim();
        return s.Length > 500 ? s[..500] : s;
    }
}
