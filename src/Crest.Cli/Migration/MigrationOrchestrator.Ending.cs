using System.Globalization;

namespace Crest.Cli.Migration;

// How a migration ends, either way, when a node's crestd dies on the way: the ending calls wait a bounded time for a
// node that does not answer (its crestd restarting on the same roots finds the frozen source still held, so waiting is
// safe), and the source is resumed only once the target is known to run no copy of it.
internal sealed partial class MigrationOrchestrator
{
    /// <summary>How long an ending call (kill or resume the source, remove the target's copy) waits for a node that does not answer.</summary>
    internal static readonly TimeSpan DefaultNodeReturnTimeout = TimeSpan.FromSeconds(60);

    /// <summary>How often a node that does not answer is asked again.</summary>
    private static readonly TimeSpan NodeReturnPoll = TimeSpan.FromMilliseconds(250);

    /// <summary>How often waiting for a node is reported.</summary>
    private static readonly TimeSpan NodeReturnReport = TimeSpan.FromSeconds(5);

    /// <summary>The bound on waiting for a node to answer again (<see cref="DefaultNodeReturnTimeout"/>; tests shorten it).</summary>
    internal TimeSpan NodeReturnTimeout { get; init; } = DefaultNodeReturnTimeout;

    /// <summary>What a switch had done when it failed, for <see cref="UndoAsync"/>.</summary>
    /// <param name="MigrationId">Set once the restore was asked for: the label its container carries on the target.</param>
    /// <param name="MadePod">The target pod this migration made, removed again.</param>
    private sealed record SwitchState(string SourceId, FrozenSource? Frozen, string? TargetToken, string? Restored, string? MigrationId, string? MadePod)
    {
        /// <summary>Post-copy over TLS: the token of the target's page client key pair, removed with DropArchive.</summary>
        public string? PageClient { get; init; }

        /// <summary>Through a registry (--via): the checkpoint image the target was asked to pull, removed from it again.</summary>
        public string? CheckpointImage { get; init; }
    }

    /// <summary>The source container carrying the migration's label, for the target's restore.</summary>
    private static SourceContainer Labelled(SourceContainer container, string migrationId) =>
        container with { Labels = new Dictionary<string, string>(container.Labels) { [MigrationLabels.MigrationId] = migrationId } };

    /// <summary>
    /// Calls <paramref name="call"/> until it is answered; while <paramref name="node"/> does not answer (its crestd down or
    /// restarting) it is asked again every <see cref="NodeReturnPoll"/> for up to <see cref="NodeReturnTimeout"/>, then the
    /// last <see cref="NodeUnavailableException"/> goes to the caller. Any other failure goes at once.
    /// </summary>
    private async Task<T> WhenAnsweredAsync<T>(IMigrationNode node, string what, Func<Task<T>> call)
    {
        var waited = time.GetTimestamp();
        long? reported = null;
        while (true)
        {
            try
            {
                return await call().ConfigureAwait(false);
            }
            catch (NodeUnavailableException e) when (time.GetElapsedTime(waited) < NodeReturnTimeout)
            {
                if (reported is null || time.GetElapsedTime(reported.Value) >= NodeReturnReport)
                {
                    progress(string.Create(CultureInfo.InvariantCulture,
                        $"waiting for {node.Name} to answer ({what}), {time.GetElapsedTime(waited).TotalSeconds:0} s of at most {NodeReturnTimeout.TotalSeconds:0} s: {e.Message}"));
                    reported = time.GetTimestamp();
                }
            }

            await Task.Delay(NodeReturnPoll, time, CancellationToken.None).ConfigureAwait(false);
        }
    }

    private async Task WhenAnsweredAsync(IMigrationNode node, string what, Func<Task> call) =>
        await WhenAnsweredAsync(node, what, async () =>
        {
            await call().ConfigureAwait(false);
            return true;
        }).ConfigureAwait(false);

    /// <summary>
    /// The switch succeeded: the frozen source is killed (never resumed) and removed, waiting for a source crestd that
    /// restarts meanwhile (its hold keeps the container frozen across the restart). Returns the source's last log line time.
    /// </summary>
    private async Task<DateTimeOffset?> EndSourceAsync(SourceContainer container, string restored, bool keepAddress)
    {
        var step = $"killing the frozen {container.Id}";
        try
        {
            await WhenAnsweredAsync(source, step, () => source.KillFrozenAsync(container.Id, CancellationToken.None)).ConfigureAwait(false);
            step = $"reading the log times of {container.Id}";
            var (lastSource, _) = await WhenAnsweredAsync(source, step, () => source.LogTimesAsync(container.Id, null, CancellationToken.None)).ConfigureAwait(false);
            step = $"removing {container.Id}";
            await WhenAnsweredAsync(source, step, () => source.RemoveContainerAsync(container.Id, CancellationToken.None)).ConfigureAwait(false);
            if (keepAddress)
            {
                step = $"removing pod {container.PodId}";
                await WhenAnsweredAsync(source, step, () => RemoveSourcePodAsync(container)).ConfigureAwait(false);
            }

            return lastSource;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Not undone: the target runs with the state. The source stays frozen (its hold survives a restart of its crestd).
            var waited = e is NodeUnavailableException ? string.Create(CultureInfo.InvariantCulture, $" ({source.Name} did not answer within {NodeReturnTimeout.TotalSeconds:0} s)") : "";
            throw new MigrationFailedException(
                $"container {container.Id} now runs on {target.Name} as {restored}, but {step} on {source.Name} failed{waited}: {Describe(e)}; "
                + $"it stays frozen there, and a restart of that crestd keeps it frozen. Remove it once {source.Name} answers: crest -r {source.Name} rm {container.Id}"
                + (keepAddress ? $", then crest -r {source.Name} stopp {container.PodId} and crest -r {source.Name} rmp {container.PodId}" : "")
                + $"; never crest resume it, its copy runs on {target.Name}", e);
        }
    }

    /// <summary>
    /// The target's first log line for the downtime; unknown (not a failure: the migration is done) when the target's
    /// crestd does not answer any more.
    /// </summary>
    private async Task<DateTimeOffset?> FirstTargetLineOrUnknownAsync(string restored, DateTimeOffset lastSource, CancellationToken ct)
    {
        try
        {
            return await FirstTargetLineAsync(restored, lastSource, ct).ConfigureAwait(false);
        }
        catch (NodeUnavailableException e)
        {
            progress($"downtime unknown: {Describe(e)}");
            return null;
        }
    }

    /// <summary>After the switch: the target's copy of the checkpoint image (--via) is removed, best effort; the registry keeps its own.</summary>
    private async Task RemoveCheckpointImageAsync(string image)
    {
        try
        {
            await WhenAnsweredAsync(target, $"removing the checkpoint image {image}", () => target.RemoveImageAsync(image, CancellationToken.None)).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            progress($"could not remove the checkpoint image {image} from {target.Name}: {Describe(e)}; remove it with crest -r {target.Name} rmi {image}");
        }
    }

    /// <summary>After the switch: an archive is dropped, best effort (a restarted crestd deleted its archives anyway).</summary>
    private async Task DropArchiveAsync(IMigrationNode node, string token)
    {
        try
        {
            await WhenAnsweredAsync(node, $"dropping archive {token}", () => node.DropArchiveAsync(token, CancellationToken.None)).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            progress($"could not drop the migration archive {token} on {node.Name}: {Describe(e)}; its crestd deletes it at its next start");
        }
    }

    /// <summary>
    /// Undoes a failed switch so that exactly one copy runs, the source's. The source is resumed only once the target is
    /// known to run no copy: when a restore was asked for, every container carrying the migration's label is found and
    /// removed first (a restore whose answer was lost may run). If the target cannot be asked within the bound, the
    /// source stays frozen and the message says how to end it by hand. When no restore was asked for, nothing can run on
    /// the target, so the source is resumed first and the target's leftovers go afterwards.
    /// </summary>
    private async Task<string> UndoAsync(SwitchState s)
    {
        var problems = new List<string>();
        async Task Try(IMigrationNode node, string what, Func<Task> step)
        {
            try
            {
                await WhenAnsweredAsync(node, what, step).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                problems.Add($"{what}: {Describe(e)}");
            }
        }

        if (s.MigrationId is { } migrationId)
        {
            if (await RemoveTargetCopiesAsync(s.Restored, migrationId) is { } unknown)
            {
                return $"undo stopped: {unknown}, and a restored copy may run there, so {s.SourceId} stays frozen on {source.Name} "
                    + $"(a restart of that crestd keeps it frozen). End it by hand: list the copy on {target.Name} with crest -r {target.Name} ps -a "
                    + $"(label {MigrationLabels.MigrationId}={migrationId}); if it runs there, keep it and crest -r {source.Name} rm {s.SourceId}; "
                    + $"if there is none (or once you removed it with crest -r {target.Name} rm ID), crest -r {source.Name} resume {s.SourceId}"
                    + (s.MadePod is { } pod ? $"; the pod this migration made there is {pod} (crest -r {target.Name} stopp {pod}, then rmp)" : "")
                    + (s.CheckpointImage is { } image ? $"; then crest -r {target.Name} rmi {image}" : "");
            }
        }
        else
        {
            // Nothing was restored: the source runs again first, the target's leftovers can wait for its crestd.
            await Try(source, $"resuming {s.SourceId} on {source.Name}", () => source.ResumeAsync(s.SourceId, CancellationToken.None)).ConfigureAwait(false);
        }

        if (s.TargetToken is not null)
        {
            await Try(target, $"dropping the archive on {target.Name}", () => target.DropArchiveAsync(s.TargetToken, CancellationToken.None)).ConfigureAwait(false);
        }

        if (s.PageClient is not null)
        {
            await Try(target, $"removing the page client key pair on {target.Name}", () => target.DropArchiveAsync(s.PageClient, CancellationToken.None)).ConfigureAwait(false);
        }

        if (s.MadePod is not null)
        {
            await Try(target, $"removing pod {s.MadePod} on {target.Name}", () => target.RemovePodAsync(s.MadePod, CancellationToken.None)).ConfigureAwait(false);
        }

        if (s.MigrationId is not null)
        {
            // Resumed whether or not the freeze answered: a freeze cut off in flight may have frozen it.
            await Try(source, $"resuming {s.SourceId} on {source.Name}", () => source.ResumeAsync(s.SourceId, CancellationToken.None)).ConfigureAwait(false);
        }

        if (s.Frozen is not null)
        {
            await Try(source, $"dropping the archive on {source.Name}", () => source.DropArchiveAsync(s.Frozen.ArchiveToken, CancellationToken.None)).ConfigureAwait(false);
        }

        if (s.CheckpointImage is not null)
        {
            // After the resume: removing an image collects garbage on the target, which may wait for its pulls.
            await Try(target, $"removing the checkpoint image {s.CheckpointImage} on {target.Name}", () => target.RemoveImageAsync(s.CheckpointImage, CancellationToken.None)).ConfigureAwait(false);
        }

        return problems.Count == 0
            ? $"undone: the container runs on {source.Name} as before, and nothing of it is left on {target.Name}"
            : $"undo incomplete ({string.Join("; ", problems)}); check both nodes with crest ps -a";
    }

    /// <summary>
    /// Removes the restored container (known by id, or found by the migration's label) from the target; null once the
    /// target answered that none is left, else why that is not known.
    /// </summary>
    private async Task<string?> RemoveTargetCopiesAsync(string? restored, string migrationId)
    {
        var step = $"finding the restored container on {target.Name}";
        try
        {
            var copies = new List<string>();
            if (restored is not null)
            {
                copies.Add(restored);
            }

            copies.AddRange(await WhenAnsweredAsync(target, step, () => target.FindRestoredAsync(migrationId, CancellationToken.None)).ConfigureAwait(false));
            foreach (var copy in copies.Distinct(StringComparer.Ordinal))
            {
                step = $"removing the restored container {copy} on {target.Name}";
                await WhenAnsweredAsync(target, step, () => target.RemoveContainerAsync(copy, CancellationToken.None)).ConfigureAwait(false);
                progress($"undo: removed the restored container {copy} from {target.Name}");
            }

            return null;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return e is NodeUnavailableException
                ? string.Create(CultureInfo.InvariantCulture, $"{target.Name} did not answer within {NodeReturnTimeout.TotalSeconds:0} s ({step}: {Describe(e)})")
                : $"{step} failed: {Describe(e)}";
        }
    }
}
