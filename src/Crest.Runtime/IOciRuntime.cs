using Crest.Core;
using Crest.Linux;

namespace Crest.Runtime;

/// <summary>The state `runc state` reports.</summary>
public sealed record OciState(string Status, int Pid);

/// <summary>
/// One OCI runtime handler (runc or crun) bound to its binary and root, driven through conmon, so stdio, logs and exit
/// codes outlive crestd. Every call names only the container and what to do with it.
/// </summary>
public interface IOciRuntime
{
    /// <summary>The handler this runtime is bound to (its name is what records keep).</summary>
    RuntimeHandlerOptions Handler { get; }

    /// <summary>Creates the container under a new conmon and returns its init pid.</summary>
    Task<int> CreateAsync(ConmonCreateOptions options, CancellationToken ct);

    /// <summary>
    /// Restores a checkpointed container under a new conmon (CRIU through <c>runc restore</c>) and returns its init pid;
    /// the container is running at once. A refusal carries the runtime's error; CRIU's own log is in the bundle.
    /// </summary>
    Task<int> RestoreAsync(RuncRestoreOptions options, CancellationToken ct);

    Task StartAsync(RuncStartOptions options, CancellationToken ct);

    /// <summary>Signals every process of the container; a container that no longer runs is not an error.</summary>
    Task KillAsync(RuncKillOptions options, CancellationToken ct);

    /// <summary>
    /// Deletes the runtime's record of the container, killing what still runs; a container the runtime does not know is
    /// not an error (and costs no runtime process).
    /// </summary>
    Task DeleteAsync(RuncDeleteOptions options, CancellationToken ct);

    /// <summary>The runtime's view of the container, or null when it does not know it.</summary>
    Task<OciState?> StateAsync(RuncStateOptions options, CancellationToken ct);

    /// <summary>Applies new cgroup limits to a created or running container.</summary>
    Task UpdateAsync(RuncUpdateOptions options, CancellationToken ct);

    /// <summary>Freezes every process of the container (cgroup freezer).</summary>
    Task PauseAsync(RuncPauseOptions options, CancellationToken ct);

    Task ResumeAsync(RuncResumeOptions options, CancellationToken ct);

    /// <summary>Dumps the container with CRIU and leaves it running; a failure carries the runtime's error output.</summary>
    Task CheckpointAsync(RuncCheckpointOptions options, CancellationToken ct);

    /// <summary>
    /// Starts a post-copy dump (<see cref="RuncCheckpointOptions.LazyPageServer"/> set) and returns once CRIU has written
    /// the images and serves the memory; the runtime keeps running until the page server's client disconnects.
    /// </summary>
    Task<LazyCheckpoint> StartLazyCheckpointAsync(RuncCheckpointOptions options, CancellationToken ct);

    /// <summary>
    /// Runs a command in a running container to completion (ExecSync). Past <paramref name="timeout"/> (when positive)
    /// the command and what it started are killed by the runtime's pid file and the result says it timed out;
    /// <paramref name="ct"/> ending kills it the same way and throws.
    /// </summary>
    Task<RuncExecResult> ExecAsync(RuncExecOptions options, TimeSpan timeout, CancellationToken ct);

    /// <summary>Starts a command in a running container with live stdio (the streaming Exec).</summary>
    IStreamSession StartExec(RuncExecOptions options, StreamOptions streams);

    /// <summary>Connects to the stdio of a container's main process through its monitor (the streaming Attach).</summary>
    Task<IStreamSession> AttachAsync(ConmonAttachOptions options, CancellationToken ct);
}

/// <summary>Binds a CRI runtime handler to the OCI runtime that serves it.</summary>
public interface IOciRuntimeFactory
{
    /// <summary>The runtime for <paramref name="handler"/> (empty: the default); an unconfigured handler is InvalidArgument.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Naming", "CA1716", Justification = "Implemented only in C#; runtimes.For(handler) reads as the domain says it.")]
    IOciRuntime For(string handler);

    /// <summary>The runtime for <paramref name="handler"/>, or null when it is no longer configured (a record from an older config).</summary>
    IOciRuntime? TryFor(string handler);
}

/// <summary>conmon + runc/crun for every configured handler, each with its own root under crestd's state.</summary>
public sealed class ConmonOciRuntimeFactory(RuntimeOptions options, RuntimeLayout layout, ICommandRunner commands, ILinux linux) : IOciRuntimeFactory
{
    public IOciRuntime For(string handler) =>
        TryFor(handler) ?? throw new CrestException(ErrorKind.InvalidArgument,
            $"runtime handler \"{Wanted(handler)}\" is not configured; configured: {string.Join(", ", options.Handlers.Select(h => h.Name))}");

    public IOciRuntime? TryFor(string handler)
    {
        var wanted = Wanted(handler);
        return options.Handlers.FirstOrDefault(h => h.Name == wanted) is { } h
            ? new ConmonOciRuntime(new OciRuntimeBinding(h, ExecutableSearch.Resolve(h.Path) ?? h.Path, layout.RuntimeRoot(h.Name), options.ConmonPath,
                layout.ExitDir, layout.SocketDir, options.CgroupDriver == CgroupDriver.Systemd), commands, linux)
            : null;
    }

    private string Wanted(string handler) => string.IsNullOrEmpty(handler) ? options.DefaultHandler : handler;
}
