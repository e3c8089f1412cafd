using System.Formats.Tar;
using Crest.Linux;

namespace Crest.Checkpoint.Format;

/// <summary>What a rootfs diff holds.</summary>
public sealed record RootfsDiffSummary(long Entries, long Bytes, IReadOnlyList<string> Deleted);

/// <summary>
/// The container's file changes, read straight from its overlay upper directory, written as one plain tar that
/// every engine restores correctly:
/// <list type="bullet">
/// <item>added and changed files, directories, links and devices as ordinary entries;</item>
/// <item>a deletion (an overlay whiteout, a 0/0 character device) as an OCI <c>.wh.NAME</c> entry, which containerd
/// applies as a deletion; an opaque directory as <c>.wh..wh..opq</c>;</item>
/// <item>deleted.files (written by the caller) lists each deleted path and its <c>.wh.</c> marker, so CRI-O and Podman,
/// which unpack the tar as plain files and then remove what deleted.files names, delete the file and leave no marker behind.</item>
/// </list>
/// Mount destinations (the runtime's mountpoints and bind mounts) are left out: their content is not the container's.
/// </summary>
public static class RootfsDiff
{
    public static async Task<RootfsDiffSummary> WriteAsync(string upperDir, Stream output, IReadOnlyCollection<string> excludedPaths, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(excludedPaths);
        var excluded = new HashSet<string>(excludedPaths.Select(p => "/" + p.Trim('/')), StringComparer.Ordinal);
        var deleted = new List<string>();
        long entries = 0;
        long bytes = 0;
        await using (var tar = new TarWriter(output, TarEntryFormat.Pax, leaveOpen: true))
        {
            var pending = new Stack<string>();
            pending.Push("");
            while (pending.Count > 0)
            {
                ct.ThrowIfCancellationRequested();
                var relative = pending.Pop();
                var dir = relative.Length == 0 ? upperDir : Path.Combine(upperDir, relative);
                var children = Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToList();
                foreach (var name in children)
                {
                    var childRelative = relative.Length == 0 ? name : relative + "/" + name;
                    var full = Path.Combine(upperDir, childRelative);
                    if (excluded.Contains("/" + childRelative))
                    {
                        continue;
                    }

                    if (FileKinds.IsOverlayWhiteout(full))
                    {
                        var marker = (relative.Length == 0 ? "" : relative + "/") + ".wh." + name;
                        await tar.WriteEntryAsync(new PaxTarEntry(TarEntryType.RegularFile, marker) { Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite }, ct).ConfigureAwait(false);
                        deleted.Add("/" + childRelative);
                        deleted.Add("/" + marker);
                        entries++;
                        continue;
                    }

                    await tar.WriteEntryAsync(full, childRelative, ct).ConfigureAwait(false);
                    entries++;
                    if (FileKinds.IsDirectory(full))
                    {
                        if (FileKinds.IsOverlayOpaque(full))
                        {
                            var opaque = childRelative + "/.wh..wh..opq";
                            await tar.WriteEntryAsync(new PaxTarEntry(TarEntryType.RegularFile, opaque) { Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite }, ct).ConfigureAwait(false);
                            deleted.Add("/" + opaque);
                            entries++;
                        }

                        pending.Push(childRelative);
                    }
                    else if (FileKinds.IsRegularFile(full))
                    {
                        bytes += new FileInfo(full).Length;
                    }
                }
            }
        }

        if (entries == 0)
        {
            // .NET's TarWriter ends an archive (two zero blocks) only after an entry; an empty file is no tar to other readers.
            await output.WriteAsync(new byte[EmptyTarBytes], ct).ConfigureAwait(false);
        }

        return new RootfsDiffSummary(entries, bytes, deleted);
    }

    /// <summary>The size of a tar with no entries: its end, two 512-byte zero blocks.</summary>
    public const int EmptyTarBytes = 1024;
}
