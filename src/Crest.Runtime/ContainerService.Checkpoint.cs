using Crest.Core;

namespace Crest.Runtime;

// The runtime's part of CheckpointContainer: a CRIU dump taken while the container is frozen, and always a thaw.
public sealed partial class ContainerService
{
    /// <summary>A container's result of a CRIU dump taken while it was paused.</summary>
    public sealed record ContainerDump(ContainerRecord Container, SandboxRecord Sandbox, TimeSpan Paused, TimeSpan CriuDump, TimeSpan RootfsCapture);

    /// <summary>
    /// Checkpoints a running container and leaves it running: pause (cgroup freezer), CRIU dump through the runtime
    /// (<c>checkpoint --leave-running</c>), <paramref name="captureRootfs"/> on the overlay upper directory while
    /// the processes are still frozen (so memory and files agree), then resume, whatever failed.
    /// Nothing else happens while the container is paused: the archive is built afterwards by the caller.
    /// </summary>
    public async Task<ContainerDump> DumpAsync(string idOrPrefix, string imagePath, string workPath, bool tcpEstablished,
        Func<ContainerRecord, string, CancellationToken, Task> captureRootfs, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(captureRootfs);
        var c = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        using var exclusive = await _locks.AcquireAsync(c.Id, ct).ConfigureAwait(false);
        c = await GetAsync(c.Id, ct).ConfigureAwait(false);
        if (c.State != ContainerState.Running)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"container {c.Id} is in CONTAINER_{c.State.ToString().ToUpperInvariant()} state. only CONTAINER_RUNNING containers can be checkpointed");
        }

        var sandbox = await sandboxes.GetAsync(c.SandboxId, ct).ConfigureAwait(false);
        if (sandbox.Spec.Namespaces.HasPodUserNamespace)
        {
            // A restore refuses a checkpoint holding a user namespace, so no archive is made that none could restore.
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"container {c.Id} runs in pod sandbox {sandbox.Id}'s own user namespace (userns_options); checkpoints cover containers in the node's user namespace only");
        }

        var runtime = runtimes.For(c.RuntimeHandler);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        TimeSpan dumped = default, captured = default, paused;
        try
        {
            // Inside the try and not cancellable: a pause that took effect is always undone below.
            await runtime.PauseAsync(new RuncPauseOptions { ContainerId = c.Id }, CancellationToken.None).ConfigureAwait(false);
            await runtime.CheckpointAsync(new RuncCheckpointOptions
            {
                ContainerId = c.Id,
                ImagePath = imagePath,
                WorkPath = workPath,
                TcpEstablished = tcpEstablished,
            }, ct).ConfigureAwait(false);
            dumped = clock.Elapsed;
            await captureRootfs(c, bundles.For(c.Id).Upper, ct).ConfigureAwait(false);
            captured = clock.Elapsed - dumped;
        }
        finally
        {
            // Never leave the container frozen, whatever failed or was cancelled.
            await runtime.ResumeAsync(new RuncResumeOptions { ContainerId = c.Id }, CancellationToken.None).ConfigureAwait(false);
            paused = clock.Elapsed;
        }

        return new ContainerDump(c, sandbox, paused, dumped, captured);
    }
}
