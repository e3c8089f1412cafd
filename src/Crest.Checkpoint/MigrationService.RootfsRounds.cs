using System.Security.Cryptography;
using Crest.Checkpoint.Format;
using Crest.Core;

namespace Crest.Checkpoint;

/// <summary>One round of a migration source's rootfs, held as an archive (ReadArchive, DropArchive) until the target has it.</summary>
public sealed record RootfsRoundArchive(string RoundsToken, int Round, string ArchiveToken, long ArchiveBytes, long Files, long Bytes, int Deleted);

// The rootfs rounds of a migration, before the freeze: the source writes and holds each round, the target stages it.
public sealed partial class MigrationService
{
    /// <summary>
    /// Sources' rootfs rounds by token: what the target holds so far (the last round's baseline and each round's SHA-256).
    /// In memory only: a crestd restarted between rounds and the freeze has forgotten them, and the freeze is refused.
    /// </summary>
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, RootfsRoundsSent> _rootfsRounds = new(StringComparer.Ordinal);

    private sealed class RootfsRoundsSent(string containerId)
    {
        public string ContainerId => containerId;

        /// <summary>One round (or the freeze) at a time: each compares against the one before.</summary>
        public SemaphoreSlim Turn { get; } = new(1, 1);

        public RootfsBaseline? Baseline { get; set; }

        public List<string> Rounds { get; } = [];
    }

    /// <summary>
    /// A source's pre-staging of the rootfs while the container runs: writes the next round (the first: the whole upper
    /// directory; later ones: what changed since the previous round began, and what was deleted since) and holds it as
    /// an archive for <see cref="OpenArchive"/>. Returns the token that names these rounds in the next round and in
    /// <see cref="FreezeAsync"/>. A round that fails leaves the rounds as they were.
    /// </summary>
    public async Task<RootfsRoundArchive> PrepareRootfsRoundAsync(string idOrPrefix, string? roundsToken, CancellationToken ct)
    {
        var c = await containers.GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        if (c.State != ContainerState.Running)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"container {c.Id} is in CONTAINER_{c.State.ToString().ToUpperInvariant()} state; only a running container's rootfs is pre-staged for a migration");
        }

        string token;
        RootfsRoundsSent sent;
        if (roundsToken is null)
        {
            token = NewToken();
            sent = new RootfsRoundsSent(c.Id);
            // A new migration of the container supersedes rounds an abandoned one left.
            foreach (var stale in _rootfsRounds.Where(kv => kv.Value.ContainerId == c.Id).Select(kv => kv.Key).ToList())
            {
                _rootfsRounds.TryRemove(stale, out _);
            }

            _rootfsRounds[token] = sent;
        }
        else
        {
            token = roundsToken;
            sent = RoundsSent(roundsToken, c.Id);
        }

        Directory.CreateDirectory(ArchiveDir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        await sent.Turn.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            var excluded = ContainerCheckpointWriter.MountDestinations(await ContainerCheckpointWriter.ReadSpecAsync(layout, c.Id, ct).ConfigureAwait(false));
            var archiveToken = NewToken();
            var path = ArchivePath(archiveToken);
            RootfsRound round;
            long archiveBytes;
            string sha;
            try
            {
                await using (var file = new FileStream(path, new FileStreamOptions
                {
                    Mode = FileMode.CreateNew,
                    Access = FileAccess.ReadWrite,
                    UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
                    BufferSize = 1 << 20,
                }))
                {
                    round = await RootfsRounds.WriteAsync(layout.Container(c.Id).Upper, file, excluded, sent.Baseline, final: false, ct).ConfigureAwait(false);
                    await file.FlushAsync(ct).ConfigureAwait(false);
                    archiveBytes = file.Length;
                    file.Position = 0;
                    sha = Convert.ToHexStringLower(await SHA256.HashDataAsync(file, ct).ConfigureAwait(false));
                }
            }
            catch
            {
                File.Delete(path);
                throw;
            }

            sent.Baseline = round.Next;
            sent.Rounds.Add(sha);
            var deleted = round.Deleted.Count(d => !Path.GetFileName(d).StartsWith(".wh.", StringComparison.Ordinal));
            CheckpointLog.MigrationRootfsRound(logger, c.Id, sent.Rounds.Count, round.Files, round.Bytes, deleted, archiveBytes, archiveToken);
            return new RootfsRoundArchive(token, sent.Rounds.Count, archiveToken, archiveBytes, round.Files, round.Bytes, deleted);
        }
        finally
        {
            sent.Turn.Release();
        }
    }

    /// <summary>The target's half of a rootfs round: stored under the staging token (a new staging when null).</summary>
    public async Task<StagedRootfsRound> ReceiveRootfsRoundAsync(string? stagingToken, IAsyncEnumerable<ReadOnlyMemory<byte>> chunks, CancellationToken ct)
    {
        var staged = await rootfsStaging.ReceiveAsync(stagingToken, chunks, ct).ConfigureAwait(false);
        CheckpointLog.MigrationRootfsRoundStaged(logger, staged.Round, staged.Bytes, staged.StagingToken);
        return staged;
    }

    /// <summary>
    /// Forgets rootfs rounds: a source's record of what it sent, or a target's staged rounds (whichever this node holds
    /// under the token). An unknown token is not an error (a retried cleanup).
    /// </summary>
    public void DropRootfsRounds(string token)
    {
        _rootfsRounds.TryRemove(token, out _);
        rootfsStaging.Drop(token);
    }

    private RootfsRoundsSent RoundsSent(string token, string containerId)
    {
        if (!_rootfsRounds.TryGetValue(token, out var sent))
        {
            throw new CrestException(ErrorKind.NotFound,
                $"rootfs rounds {token} are not known on this node (never made here, already frozen, dropped, or crestd restarted since); start the rounds again with an empty token");
        }

        return sent.ContainerId == containerId
            ? sent
            : throw new CrestException(ErrorKind.InvalidArgument, $"rootfs rounds {token} are container {sent.ContainerId}'s, not container {containerId}'s");
    }
}
