using System.Formats.Tar;
using Crest.Linux;

namespace Crest.Checkpoint.Format;

/// <summary>
/// What a migration target already holds of a container's upper directory after the rounds sent so far: every path
/// the last round saw (with the inode it named and whether it was a directory) and the instant that round began, on
/// the kernel's file clock.
/// </summary>
public sealed class RootfsBaseline(long startedUnixNanos, IReadOnlyDictionary<string, RootfsBaseline.Seen> paths)
{
    /// <summary>One path as a round saw it.</summary>
    public readonly record struct Seen(ulong Inode, bool IsDirectory);

    /// <summary>When the round that made this baseline began walking (<see cref="FileKinds.CoarseRealtimeNanos"/>).</summary>
    public long StartedUnixNanos { get; } = startedUnixNanos;

    /// <summary>Paths relative to the upper directory, without a leading slash.</summary>
    public IReadOnlyDictionary<string, Seen> Paths { get; } = paths;
}

/// <summary>What one round (or the frozen delta) wrote, and the baseline the next one compares against.</summary>
public sealed record RootfsRound(long Entries, long Files, long Bytes, IReadOnlyList<string> Deleted, RootfsBaseline Next);

/// <summary>
/// The rootfs diff in rounds, for a live migration: the first round is the whole upper directory, each later round
/// only what changed since the previous round began, so that the frozen window carries only the last, small delta.
/// <para>
/// "Changed since" is decided per path, never from a directory's time alone: a path is sent when it is new (not seen
/// by the previous round, or now another inode: renamed in, replaced, recreated) or when its change time (ctime,
/// which every write, chmod, chown, link and rename moves, and utimes cannot set back) or modification time is at or
/// after the previous round's start less <see cref="ClockMarginNanos"/>. The start is read from the kernel's coarse
/// clock, the one file timestamps come from, before the walk, so a file written while a round reads it, even within the
/// same tick, is sent again next round. Paths the previous round saw that are gone now (deleted, or renamed away) are sent as <c>.wh.</c> deletions
/// (only the topmost of a vanished tree). A filesystem whose timestamps keep whole seconds (the upper directory's own
/// change time has no fraction) gets <see cref="CoarseTimestampMarginNanos"/> instead.
/// </para>
/// While the container runs, a file may change or vanish under the walk: a regular file's entry holds exactly the
/// length it had when opened (zeros past a shrink), and a path that vanished is left to the next round, where it shows
/// as deleted. The frozen delta (<c>final</c>) walks a tree that no longer changes, so its result is exact.
/// </summary>
public static class RootfsRounds
{
    /// <summary>
    /// Covers a write(2) in flight when a round begins: the kernel stamps the file as the write begins, before it copies
    /// the data, so a write that began just before the start may still be landing while the round reads the file.
    /// </summary>
    public const long ClockMarginNanos = 50_000_000;

    /// <summary>The margin on a filesystem that stores whole seconds: any change in the second of the start is sent again.</summary>
    public const long CoarseTimestampMarginNanos = 1_000_000_000;

    /// <summary>
    /// Writes to <paramref name="output"/> the entries of <paramref name="upperDir"/> changed since <paramref name="since"/>
    /// (everything when null), the deletions since, and, with <paramref name="final"/>, lists in <see cref="RootfsRound.Deleted"/>
    /// every whiteout of the upper directory (deleted.files of the frozen delta: the deletions as of now, whether sent before or not).
    /// </summary>
    /// <remarks><paramref name="marginNanos"/> replaces <see cref="ClockMarginNanos"/> (tests of the rule itself use 0).</remarks>
    public static async Task<RootfsRound> WriteAsync(string upperDir, Stream output, IReadOnlyCollection<string> excludedPaths, RootfsBaseline? since, bool final, CancellationToken ct,
        long marginNanos = ClockMarginNanos)
    {
        ArgumentNullException.ThrowIfNull(excludedPaths);
        // Read before the walk: whatever changes from here on has a change time at or after it.
        var started = FileKinds.CoarseRealtimeNanos();
        var margin = FileKinds.TryStamp(upperDir, out var root) && root.ChangedUnixNanos % 1_000_000_000 == 0 ? Math.Max(marginNanos, CoarseTimestampMarginNanos) : marginNanos;
        var cutoff = since is null ? long.MinValue : since.StartedUnixNanos - margin;
        var excluded = new HashSet<string>(excludedPaths.Select(p => p.Trim('/')), StringComparer.Ordinal);
        var current = new Dictionary<string, RootfsBaseline.Seen>(StringComparer.Ordinal);
        var deleted = new List<string>();
        long entries = 0, files = 0, bytes = 0;
        await using (var tar = new TarWriter(output, TarEntryFormat.Pax, leaveOpen: true))
        {
            var pending = new Stack<string>();
            pending.Push("");
            while (pending.Count > 0)
            {
                ct.ThrowIfCancellationRequested();
                var relative = pending.Pop();
                foreach (var name in Children(relative.Length == 0 ? upperDir : Path.Combine(upperDir, relative)))
                {
                    var path = relative.Length == 0 ? name : relative + "/" + name;
                    var full = Path.Combine(upperDir, path);
                    if (excluded.Contains(path) || !FileKinds.TryStamp(full, out var stamp))
                    {
                        continue;
                    }

                    var isNew = since is null || !since.Paths.TryGetValue(path, out var before) || before.Inode != stamp.Inode;
                    var changed = isNew || stamp.ChangedUnixNanos >= cutoff || stamp.ModifiedUnixNanos >= cutoff;
                    current[path] = new RootfsBaseline.Seen(stamp.Inode, stamp.IsDirectory);
                    if ((stamp.Mode & 0xF000) == 0x2000 && FileKinds.IsOverlayWhiteout(full))
                    {
                        var marker = (relative.Length == 0 ? "" : relative + "/") + ".wh." + name;
                        if (changed)
                        {
                            await tar.WriteEntryAsync(Marker(marker), ct).ConfigureAwait(false);
                            entries++;
                        }

                        if (changed || final)
                        {
                            deleted.Add("/" + path);
                            deleted.Add("/" + marker);
                        }

                        continue;
                    }

                    try
                    {
                        if (stamp.IsRegularFile)
                        {
                            if (changed)
                            {
                                bytes += await WriteFileAsync(tar, full, path, stamp, ct).ConfigureAwait(false);
                                files++;
                                entries++;
                            }

                            continue;
                        }

                        if (changed)
                        {
                            await tar.WriteEntryAsync(full, path, ct).ConfigureAwait(false);
                            entries++;
                        }
                    }
                    catch (IOException) when (!final && (!FileKinds.TryStamp(full, out var now) || now.Inode != stamp.Inode || now.Mode != stamp.Mode))
                    {
                        // Gone or replaced under the walk of a running container: deleted on the target now, sent again next round.
                        current.Remove(path);
                        continue;
                    }

                    if (stamp.IsDirectory)
                    {
                        // Marked only when the directory is new to the target: an opaque marker clears what is below it there.
                        if (isNew && FileKinds.IsOverlayOpaque(full))
                        {
                            await tar.WriteEntryAsync(Marker(path + "/.wh..wh..opq"), ct).ConfigureAwait(false);
                            deleted.Add("/" + path + "/.wh..wh..opq");
                            entries++;
                        }

                        pending.Push(path);
                    }
                }
            }

            if (since is not null)
            {
                foreach (var gone in since.Paths.Keys.Where(p => !current.ContainsKey(p)).Order(StringComparer.Ordinal))
                {
                    var parent = Path.GetDirectoryName(gone)?.Replace('\\', '/') ?? "";
                    // Only the top of a vanished tree, and only under a directory: a parent that is now a file replaced the tree already.
                    if (parent.Length > 0 && !(current.TryGetValue(parent, out var p) && p.IsDirectory))
                    {
                        continue;
                    }

                    var marker = (parent.Length == 0 ? "" : parent + "/") + ".wh." + Path.GetFileName(gone);
                    await tar.WriteEntryAsync(Marker(marker), ct).ConfigureAwait(false);
                    deleted.Add("/" + gone);
                    deleted.Add("/" + marker);
                    entries++;
                }
            }
        }

        if (entries == 0)
        {
            // TarWriter writes nothing at all without an entry; a reader needs the end-of-archive blocks.
            await output.WriteAsync(new byte[2 * 512], ct).ConfigureAwait(false);
        }

        return new RootfsRound(entries, files, bytes, deleted, new RootfsBaseline(started, current));
    }

    private static List<string> Children(string dir)
    {
        try
        {
            return Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToList();
        }
        catch (DirectoryNotFoundException)
        {
            // Removed under the walk: its paths are deleted as of the next round.
            return [];
        }
    }

    private static PaxTarEntry Marker(string name) => new(TarEntryType.RegularFile, name) { Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite };

    /// <summary>A regular file as an entry of exactly the length it had when opened; returns that length.</summary>
    private static async Task<long> WriteFileAsync(TarWriter tar, string full, string name, FileStamp stamp, CancellationToken ct)
    {
        using var handle = FileKinds.OpenReadNoFollow(full);
        var length = RandomAccess.GetLength(handle);
        await using var content = new FixedLengthReadStream(new FileStream(handle, FileAccess.Read, 1 << 16), length);
        var entry = new PaxTarEntry(TarEntryType.RegularFile, name)
        {
            Mode = (UnixFileMode)(stamp.Mode & 0xFFF),
            Uid = (int)stamp.Uid,
            Gid = (int)stamp.Gid,
            ModificationTime = DateTimeOffset.UnixEpoch.AddTicks(stamp.ModifiedUnixNanos / 100),
            DataStream = content,
        };
        await tar.WriteEntryAsync(entry, ct).ConfigureAwait(false);
        return length;
    }

    /// <summary>
    /// Reads exactly <c>length</c> bytes of a file that may change while it is read: what it grew by is left for the next
    /// round, what it shrank by reads as zeros (the next round sends it again, as its change time moved).
    /// </summary>
    private sealed class FixedLengthReadStream(Stream inner, long length) : Stream
    {
        private long _position;

        public override bool CanRead => true;

        public override bool CanSeek => true;

        public override bool CanWrite => false;

        public override long Length => length;

        public override long Position
        {
            get => _position;
            set => Seek(value, SeekOrigin.Begin);
        }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            var want = (int)Math.Min(buffer.Length, length - _position);
            if (want <= 0)
            {
                return 0;
            }

            var n = inner.Read(buffer[..want]);
            if (n == 0)
            {
                buffer[..want].Clear();
                n = want;
            }

            _position += n;
            return n;
        }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            var want = (int)Math.Min(buffer.Length, length - _position);
            if (want <= 0)
            {
                return 0;
            }

            var n = await inner.ReadAsync(buffer[..want], cancellationToken).ConfigureAwait(false);
            if (n == 0)
            {
                buffer.Span[..want].Clear();
                n = want;
            }

            _position += n;
            return n;
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override long Seek(long offset, SeekOrigin origin)
        {
            var to = origin switch
            {
                SeekOrigin.Begin => offset,
                SeekOrigin.Current => _position + offset,
                _ => length + offset,
            };
            return to == _position ? _position : throw new NotSupportedException("a rootfs round reads each file once, in order");
        }

        public override void Flush()
        {
        }

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                inner.Dispose();
            }

            base.Dispose(disposing);
        }

        public override async ValueTask DisposeAsync()
        {
            await inner.DisposeAsync().ConfigureAwait(false);
            await base.DisposeAsync().ConfigureAwait(false);
        }
    }
}
