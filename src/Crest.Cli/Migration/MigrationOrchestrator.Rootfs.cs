using System.Globalization;

namespace Crest.Cli.Migration;

// Pre-staging of the container's rootfs while it runs: rounds from the source's upper directory to the target, until
// one is small (RootfsRoundRule), so that the frozen window carries only the last changes.
internal sealed partial class MigrationOrchestrator
{
    /// <summary>The rounds sent so far and the tokens that name them on each node (what the undo drops).</summary>
    private sealed class RootfsPreStaging
    {
        /// <summary>The source's record of what it sent (PrepareRootfsRound, then Freeze).</summary>
        public string? SourceToken { get; set; }

        /// <summary>The target's staged rounds (WriteRootfsRound, then CreateContainer's annotation).</summary>
        public string? TargetToken { get; set; }

        public List<RootfsRoundReport> Rounds { get; } = [];

        public long BytesSent => Rounds.Sum(r => r.ArchiveBytes);
    }

    /// <summary>
    /// Sends rounds of the running container's rootfs until <see cref="RootfsRoundRule"/> says stop. Each round is held on
    /// the source as an archive, streamed through this client into the target's staging, and dropped on the source.
    /// </summary>
    private async Task StageRootfsAsync(string containerId, RootfsPreStaging staging, CancellationToken ct)
    {
        while (RootfsRoundRule.AnotherRound(staging.Rounds.Select(r => r.ArchiveBytes).ToList()))
        {
            var round = await source.PrepareRootfsRoundAsync(containerId, staging.SourceToken, ct).ConfigureAwait(false);
            staging.SourceToken = round.RoundsToken;
            try
            {
                var trailer = new ArchiveTrailer();
                var (token, number, bytes) = await target.WriteRootfsRoundAsync(staging.TargetToken, ReadAhead(source.ReadArchiveAsync(round.ArchiveToken, trailer, ct), ct), trailer, ct).ConfigureAwait(false);
                staging.TargetToken = token;
                if (bytes != round.ArchiveBytes || number != round.Round)
                {
                    throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture,
                        $"{target.Name} stored {bytes} bytes as rootfs round {number}, but {source.Name} sent {round.ArchiveBytes} bytes as round {round.Round}"));
                }
            }
            finally
            {
                await source.DropArchiveAsync(round.ArchiveToken, CancellationToken.None).ConfigureAwait(false);
            }

            staging.Rounds.Add(new RootfsRoundReport(round.Round, round.Files, round.Bytes, round.Deleted, round.ArchiveBytes));
            progress(string.Create(CultureInfo.InvariantCulture,
                $"pre-stage: rootfs round {round.Round}: {round.Files} files, {round.Bytes} bytes, {round.Deleted} deleted ({round.ArchiveBytes} bytes sent to {target.Name})"));
        }
    }

    /// <summary>The undo's share for the rootfs: the target's staged rounds and the source's record go; null when all went.</summary>
    private async Task<string?> DropRootfsRoundsAsync(RootfsPreStaging staging)
    {
        var problems = new List<string>();
        foreach (var (node, token) in new[] { (target, staging.TargetToken), (source, staging.SourceToken) })
        {
            if (token is null)
            {
                continue;
            }

            try
            {
                await node.DropRootfsRoundsAsync(token, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                problems.Add($"dropping the rootfs rounds on {node.Name}: {Describe(e)}");
            }
        }

        return problems.Count == 0 ? null : string.Join("; ", problems);
    }
}
