using System.Globalization;
using System.Security.Cryptography;
using Crest.Checkpoint.Format;
using Crest.Core;

namespace Crest.Checkpoint;

/// <summary>One rootfs round stored on a migration's target.</summary>
public sealed record StagedRootfsRound(string StagingToken, int Round, long Bytes, string Sha256);

/// <summary>
/// A migration target's rootfs rounds, received while the source still runs and kept under
/// <c>&lt;root&gt;/migrations/&lt;token&gt;.rootfs/</c> (0700) as <c>NNNN-SHA256.tar</c>, in the order they came. The
/// restore of the frozen checkpoint claims them (<see cref="Claim"/>): checked against the rounds the checkpoint says it
/// sits on, moved into the restore's own directory, applied at StartContainer before the checkpoint's delta, and deleted
/// with it whether the restore succeeds or not. What is left (a migration abandoned before its restore) goes with
/// <see cref="Drop"/> or at crestd's start (<see cref="Sweep"/>).
/// </summary>
public sealed class RootfsStaging(CrestPaths paths, RestoreOptions restore)
{
    private const string Suffix = ".rootfs";

    /// <summary>Where a node keeps migration archives and staged rounds.</summary>
    public string Dir => Path.Combine(paths.Root, "migrations");

    /// <summary>
    /// Stores one round streamed in: into the staging named by <paramref name="stagingToken"/> (one this node handed out),
    /// or a new one when it is null. All rounds of one staging together may take what one received archive may
    /// ([restore] max_archive_bytes, and the free space less disk_reserve_bytes); a broken transfer stores nothing.
    /// </summary>
    public async Task<StagedRootfsRound> ReceiveAsync(string? stagingToken, IAsyncEnumerable<ReadOnlyMemory<byte>> chunks, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(chunks);
        if (!restore.ViaCreate)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                "this node does not restore checkpoints through CreateContainer ([restore] via_create = false, or [checkpoint] enabled = false), so it cannot be a migration's target; set [restore] via_create = true in its config.toml");
        }

        Directory.CreateDirectory(Dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var token = stagingToken ?? NewToken();
        var dir = StagingDir(token);
        if (stagingToken is null)
        {
            Directory.CreateDirectory(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
        else if (!Directory.Exists(dir))
        {
            throw new CrestException(ErrorKind.NotFound, $"rootfs staging {token} is not on this node (not under {Dir}); start a new one with an empty staging token");
        }

        var rounds = Rounds(dir);
        if (rounds.Count >= CheckpointReader.MaxStagedRootfsRounds)
        {
            throw new CrestException(ErrorKind.ResourceExhausted, $"rootfs staging {token} already holds {rounds.Count} rounds, the most a checkpoint may sit on; freeze the container now");
        }

        var limits = restore.Limits;
        var staged = rounds.Sum(r => new FileInfo(r).Length);
        var cap = limits.MaxArchiveBytes - staged;
        if (limits.TargetFilesystem is not null)
        {
            cap = Math.Min(cap, limits.FreeBytesOf(Dir) - limits.DiskReserveBytes);
        }

        var round = rounds.Count + 1;
        var temp = Path.Combine(dir, $".{round:D4}.partial");
        try
        {
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            var bytes = await ReceivedFile.WriteAsync(temp, chunks, cap,
                () => new CrestException(ErrorKind.ResourceExhausted,
                    $"rootfs round {round} of staging {token} passed {Math.Max(0, cap)} bytes, what is left for it ({staged} bytes staged already; [restore] max_archive_bytes, or the free space of {Dir} less [restore] disk_reserve_bytes); free space on the target or raise the limit"),
                (chunk, _) => hash.AppendData(chunk.Span), ct).ConfigureAwait(false);
            var sha = Convert.ToHexStringLower(hash.GetHashAndReset());
            File.Move(temp, Path.Combine(dir, $"{round:D4}-{sha}.tar"));
            return new StagedRootfsRound(token, round, bytes, sha);
        }
        catch when (stagingToken is null)
        {
            // A first round that failed made a staging nobody knows the token of.
            Directory.Delete(dir, recursive: true);
            throw;
        }
        finally
        {
            if (File.Exists(temp))
            {
                File.Delete(temp);
            }
        }
    }

    /// <summary>
    /// Moves the rounds staged under <paramref name="stagingToken"/> into <paramref name="destination"/> (a new directory,
    /// named NNNN.tar there) after checking they are exactly <paramref name="expected"/>, in order: a token of another
    /// migration, or a round that never arrived, is refused naming what differs. The staging is gone afterwards.
    /// </summary>
    public void Claim(string stagingToken, IReadOnlyList<string> expected, string destination, string checkpoint)
    {
        ArgumentNullException.ThrowIfNull(expected);
        var dir = StagingDir(stagingToken);
        if (!Directory.Exists(dir))
        {
            throw new CrestException(ErrorKind.NotFound,
                $"checkpoint {checkpoint} sits on {expected.Count} rootfs rounds staged under {stagingToken}, but this node holds no such staging (not under {Dir}: dropped, swept at a restart, or never made here); migrate the container again");
        }

        var rounds = Rounds(dir);
        var held = rounds.Select(r => Path.GetFileNameWithoutExtension(r)[5..]).ToList();
        if (!held.SequenceEqual(expected, StringComparer.Ordinal))
        {
            var first = Enumerable.Range(0, Math.Max(held.Count, expected.Count)).First(i => i >= held.Count || i >= expected.Count || held[i] != expected[i]);
            throw new CrestException(ErrorKind.FailedPrecondition,
                string.Create(CultureInfo.InvariantCulture, $"checkpoint {checkpoint} sits on {expected.Count} rootfs rounds, but staging {stagingToken} on this node holds {held.Count}, and round {first + 1} ")
                + (first >= held.Count ? "never arrived" : first >= expected.Count ? "is one the checkpoint does not know" : "is another round (a staging of another container or migration)")
                + "; migrate the container again");
        }

        Directory.CreateDirectory(destination, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        for (var i = 0; i < rounds.Count; i++)
        {
            File.Move(rounds[i], Path.Combine(destination, string.Create(CultureInfo.InvariantCulture, $"{i + 1:D4}.tar")));
        }

        Directory.Delete(dir, recursive: true);
    }

    /// <summary>The staged rounds a restore directory holds, in the order to apply them.</summary>
    public static IReadOnlyList<string> ClaimedRounds(string restoreDir)
    {
        var dir = Path.Combine(restoreDir, CheckpointFiles.StagedRootfsRounds);
        return Directory.Exists(dir) ? Directory.EnumerateFiles(dir, "*.tar").Order(StringComparer.Ordinal).ToList() : [];
    }

    /// <summary>Deletes a staging and its rounds; an unknown token is not an error (a retried cleanup).</summary>
    public void Drop(string stagingToken)
    {
        var dir = StagingDir(stagingToken);
        if (Directory.Exists(dir))
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Removes stagings an abandoned or crashed migration left (at start, before serving).</summary>
    public int Sweep()
    {
        if (!Directory.Exists(Dir))
        {
            return 0;
        }

        var removed = 0;
        foreach (var dir in Directory.EnumerateDirectories(Dir, "*" + Suffix))
        {
            Directory.Delete(dir, recursive: true);
            removed++;
        }

        return removed;
    }

    private static List<string> Rounds(string dir) =>
        Directory.EnumerateFiles(dir, "*.tar").Where(f => Path.GetFileName(f).Length == 4 + 1 + 64 + 4).Order(StringComparer.Ordinal).ToList();

    private string StagingDir(string token) => IsToken(token)
        ? Path.Combine(Dir, token + Suffix)
        : throw new CrestException(ErrorKind.InvalidArgument, $"rootfs staging token \"{token}\" is not one this node hands out (24 lowercase hex digits)");

    private static bool IsToken(string token) => token is { Length: 24 } && token.All(char.IsAsciiHexDigitLower);

    private static string NewToken() => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(12));
}
