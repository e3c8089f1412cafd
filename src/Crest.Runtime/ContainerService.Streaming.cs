using Crest.Core;

namespace Crest.Runtime;

// Exec and attach with live stdio: what the streaming server runs once a client redeems its token.
public sealed partial class ContainerService
{
    /// <summary>
    /// The check the Exec and Attach RPCs make before handing out a URL: the container exists and runs.
    /// The message is containerd's ("container is in CONTAINER_EXITED state"), so clients that match on it behave alike.
    /// </summary>
    public async Task<ContainerRecord> RequireRunningAsync(string idOrPrefix, CancellationToken ct)
    {
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        return c.State == ContainerState.Running
            ? c
            : throw new CrestException(ErrorKind.FailedPrecondition, $"container {c.Id} is in CONTAINER_{c.State.ToString().ToUpperInvariant()} state");
    }

    /// <summary>Starts <paramref name="command"/> in a running container with live stdio (<c>runc exec</c>, with a terminal when asked).</summary>
    public async Task<IStreamSession> ExecAsync(string idOrPrefix, IReadOnlyList<string> command, StreamOptions streams, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(command);
        ArgumentNullException.ThrowIfNull(streams);
        if (command.Count == 0)
        {
            throw new CrestException(ErrorKind.InvalidArgument, "Exec needs a command");
        }

        var c = await RequireRunningAsync(idOrPrefix, ct).ConfigureAwait(false);
        return runtimes.For(c.RuntimeHandler).StartExec(await PrepareExecAsync(c, command, streams.Tty, ct).ConfigureAwait(false), streams);
    }

    /// <summary>
    /// Attaches to a running container's main process through conmon; stdin only if the container was created with it.
    /// Whether there is a terminal is the container's (as containerd decides it), whatever the request says.
    /// </summary>
    public async Task<IStreamSession> AttachAsync(string idOrPrefix, StreamOptions streams, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(streams);
        var c = await RequireRunningAsync(idOrPrefix, ct).ConfigureAwait(false);
        if (streams.Stdin && !c.Spec.Stdin)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {c.Id} was not created with stdin = true; attach without stdin");
        }

        var bundle = bundles.For(c.Id);
        return await runtimes.For(c.RuntimeHandler).AttachAsync(new ConmonAttachOptions
        {
            ContainerId = c.Id,
            SocketDirectory = bundle.AttachDir,
            ControlFifo = bundle.ControlFifo,
        }, ct).ConfigureAwait(false);
    }
}
