using System.Formats.Tar;
using System.Runtime.InteropServices;
using System.Text;
using Crest.Core;
using Microsoft.Win32.SafeHandles;

namespace Crest.Linux;

/// <summary>What a tar stream may put on disk.</summary>
public sealed record ExtractionPolicy
{
    /// <summary>Symbolic and hard links (image layers: yes; checkpoint metadata: no).</summary>
    public bool AllowLinks { get; init; } = true;

    /// <summary>Character and block devices and FIFOs.</summary>
    public bool AllowDevices { get; init; } = true;

    /// <summary>Apply the entries' owners (needs root); otherwise files belong to the extracting user.</summary>
    public bool ApplyOwners { get; init; } = true;

    /// <summary>How <c>.wh.</c> entries are handled.</summary>
    public WhiteoutMode Whiteouts { get; init; } = WhiteoutMode.Overlay;

    public long MaxEntries { get; init; } = 1_000_000;

    public long MaxBytes { get; init; } = 1L << 40;

    /// <summary>The setting behind <see cref="MaxBytes"/>, named in errors ("[restore] max_archive_bytes").</summary>
    public string? MaxBytesSetting { get; init; }

    /// <summary>
    /// Bytes that may be written per compressed byte read (counted by the caller, see
    /// <see cref="SafeExtractor.ExtractAsync(Stream, string, Func{long}?, CancellationToken)"/>) once the extraction has
    /// written <see cref="RatioCheckFloorBytes"/>; 0 turns the check off. A decompression bomb is stopped while it expands.
    /// </summary>
    public double MaxExpansionRatio { get; init; }

    /// <summary>Expansion up to this many bytes is not checked for its ratio: small, very compressible archives are normal.</summary>
    public long RatioCheckFloorBytes { get; init; } = 64L << 20;

    /// <summary>The setting behind <see cref="MaxExpansionRatio"/>, named in errors ("[images] max_expansion_ratio").</summary>
    public string RatioSetting { get; init; } = "max_expansion_ratio";

    /// <summary>
    /// What the target filesystem can take: each regular file is taken from it before a byte is written, so extractions
    /// running side by side share one free space. The caller opened it and closes it; null: not checked.
    /// </summary>
    public DiskBudget? Disk { get; init; }

    public int MaxPathLength { get; init; } = 4096;

    /// <summary>
    /// Regular files (by normalised name) that stay where the archive holds them: nothing is written for them, they
    /// count towards <see cref="MaxBytes"/> and <see cref="MaxEntries"/> but not <see cref="Disk"/>, and the result lists
    /// them (<see cref="ExtractionResult.LeftInArchive"/>) for the caller to serve from the archive. Null: every entry is written.
    /// </summary>
    public IReadOnlySet<string>? LeaveInArchive { get; init; }

    /// <summary>Image layers: everything a layer may hold, whiteouts in overlay form.</summary>
    public static ExtractionPolicy ImageLayer { get; } = new();

    /// <summary>Untrusted metadata: regular files and directories only.</summary>
    public static ExtractionPolicy FilesOnly { get; } = new()
    {
        AllowLinks = false,
        AllowDevices = false,
        ApplyOwners = false,
        Whiteouts = WhiteoutMode.Reject,
    };
}

public enum WhiteoutMode
{
    /// <summary>A whiteout becomes a 0/0 character device, an opaque marker the trusted.overlay.opaque xattr: the layer is one overlay lower dir.</summary>
    Overlay,

    /// <summary>A whiteout deletes what it names below it: the layer is applied onto an existing tree.</summary>
    Delete,

    /// <summary>A whiteout is an error.</summary>
    Reject,
}

/// <summary>What an extraction wrote, and the files it left in the archive (<see cref="ExtractionPolicy.LeaveInArchive"/>).</summary>
public sealed record ExtractionResult(long Entries, long Bytes)
{
    public IReadOnlyList<ArchivedFile> LeftInArchive { get; init; } = [];
}

/// <summary>A regular file of a tar archive, by normalised name, and its size as its header declares it.</summary>
public sealed record ArchivedFile(string Name, long Length);

/// <summary>
/// The one way untrusted tar bytes reach the disk. Every path is resolved relative to a handle on the
/// target root with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), so no entry can leave the root,
/// follow a symlink it planted, or write through a link; names with <c>..</c> or a leading <c>/</c> are
/// refused outright. Caps on entries, bytes and path length bound what an archive can make us write.
/// A failure throws <see cref="CrestException"/> naming the entry; the caller owns the (fresh) root and
/// removes it, so nothing half-extracted survives.
/// </summary>
public sealed class SafeExtractor : IDisposable
{
    private const string WhiteoutPrefix = ".wh.";
    private const string OpaqueMarker = ".wh..wh..opq";
    private const ulong Resolve = Interop.RESOLVE_BENEATH | Interop.RESOLVE_NO_SYMLINKS | Interop.RESOLVE_NO_MAGICLINKS | Interop.RESOLVE_NO_XDEV;

    private readonly int _root;
    private readonly string _rootPath;
    private readonly ExtractionPolicy _policy;
    private readonly List<(string Path, DateTimeOffset Modified)> _directoryTimes = [];
    private readonly List<ArchivedFile> _left = [];
    private Func<long>? _compressedBytesRead;

    public SafeExtractor(string root, ExtractionPolicy policy)
    {
        ArgumentNullException.ThrowIfNull(policy);
        _rootPath = root;
        _policy = policy;
        _root = Interop.OpenAt(Interop.AT_FDCWD, root, Interop.O_PATH | Interop.O_DIRECTORY | Interop.O_CLOEXEC | Interop.O_NOFOLLOW, 0);
        if (_root < 0)
        {
            throw new CrestException(ErrorKind.Internal, $"cannot open extraction root {root}: {Interop.Errno()}");
        }
    }

    /// <summary>Extracts every entry of <paramref name="tar"/>; <paramref name="what"/> names the archive in errors.</summary>
    public Task<ExtractionResult> ExtractAsync(Stream tar, string what, CancellationToken ct) => ExtractAsync(tar, what, null, ct);

    /// <summary>
    /// Extracts every entry of <paramref name="tar"/>, a decompressed stream; <paramref name="compressedBytesRead"/> says how
    /// many compressed bytes the decompressor has consumed so far, for <see cref="ExtractionPolicy.MaxExpansionRatio"/>.
    /// </summary>
    public async Task<ExtractionResult> ExtractAsync(Stream tar, string what, Func<long>? compressedBytesRead, CancellationToken ct)
    {
        _compressedBytesRead = compressedBytesRead;
        long entries = 0;
        long bytes = 0;
        using var reader = new TarReader(tar, leaveOpen: true);
        while (true)
        {
            TarEntry? entry;
            try
            {
                entry = await reader.GetNextEntryAsync(copyData: false, ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not (OperationCanceledException or CrestException or OutOfMemoryException))
            {
                // Whatever the tar reader throws on bytes it cannot make sense of, the archive is malformed.
                throw Refuse(what, null, $"the tar stream is malformed or truncated ({e.Message})");
            }

            if (entry is null)
            {
                break;
            }

            if (entry.EntryType is TarEntryType.GlobalExtendedAttributes or TarEntryType.ExtendedAttributes)
            {
                continue;
            }

            if (++entries > _policy.MaxEntries)
            {
                throw Refuse(what, entry.Name, $"the archive has more than {_policy.MaxEntries} entries, the configured limit");
            }

            bytes += await ApplyAsync(entry, what, bytes, ct).ConfigureAwait(false);
        }

        // Directory times last: creating their children changed them.
        foreach (var (path, modified) in _directoryTimes)
        {
            SetTimesAt(path, modified);
        }

        return new ExtractionResult(entries, bytes) { LeftInArchive = [.. _left] };
    }

    /// <summary>
    /// Removes <paramref name="path"/> (a file or a whole tree) below the root, as a whiteout would; the path is
    /// untrusted (CRI-O's and Podman's deleted.files), so it is resolved like an entry name and never through a link.
    /// A path that does not exist is not an error.
    /// </summary>
    public void Remove(string path, string what)
    {
        ArgumentNullException.ThrowIfNull(path);
        string name;
        try
        {
            name = NormalizeName(path.TrimStart('/'), _policy.MaxPathLength);
        }
        catch (FormatException e)
        {
            throw Refuse(what, path, e.Message);
        }

        if (name.Length == 0)
        {
            throw Refuse(what, path, "the root itself cannot be removed");
        }

        var (parentPath, leaf) = Split(name);
        if (parentPath.Length > 0)
        {
            var probe = Interop.Openat2(_root, parentPath, (ulong)(Interop.O_PATH | Interop.O_DIRECTORY | Interop.O_CLOEXEC), Resolve);
            if (probe < 0)
            {
                if (Marshal.GetLastPInvokeError() is Interop.ENOENT or Interop.ENOTDIR)
                {
                    return;
                }

                throw Refuse(what, path, ParentProblem(Marshal.GetLastPInvokeError(), parentPath));
            }

            _ = Interop.Close(probe);
        }

        using var parent = OpenParent(parentPath, what, path, create: false);
        RemoveTree(parent.Fd, leaf, what, path);
    }

    public void Dispose() => _ = Interop.Close(_root);

    /// <summary>"./a/b/" -> "a/b"; refuses absolute names, "..", empty components and over-long paths.</summary>
    public static string NormalizeName(string name, int maxPathLength = 4096)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (name.StartsWith('/'))
        {
            throw new FormatException("absolute names are not allowed");
        }

        if (Encoding.UTF8.GetByteCount(name) > maxPathLength)
        {
            throw new FormatException($"the name is longer than {maxPathLength} bytes");
        }

        if (name.Contains('\0', StringComparison.Ordinal))
        {
            throw new FormatException("the name contains a NUL byte");
        }

        var parts = new List<string>();
        foreach (var part in name.Split('/'))
        {
            if (part.Length == 0 || part == ".")
            {
                continue;
            }

            if (part == "..")
            {
                throw new FormatException("'..' is not allowed in names");
            }

            if (Encoding.UTF8.GetByteCount(part) > 255)
            {
                throw new FormatException("a path component is longer than 255 bytes");
            }

            parts.Add(part);
        }

        return string.Join('/', parts);
    }

    private async Task<long> ApplyAsync(TarEntry entry, string what, long bytesSoFar, CancellationToken ct)
    {
        string name;
        try
        {
            name = NormalizeName(entry.Name, _policy.MaxPathLength);
        }
        catch (FormatException e)
        {
            throw Refuse(what, entry.Name, e.Message);
        }

        if (name.Length == 0)
        {
            // The root itself ("./"): its attributes belong to whoever made the root.
            return 0;
        }

        var (parentPath, leaf) = Split(name);
        if (leaf.StartsWith(WhiteoutPrefix, StringComparison.Ordinal))
        {
            ApplyWhiteout(entry, what, parentPath, leaf);
            return 0;
        }

        using var parent = OpenParent(parentPath, what, entry.Name, create: true);
        switch (entry.EntryType)
        {
            case TarEntryType.Directory:
                MakeDirectory(parent.Fd, leaf, entry, what, name);
                return 0;
            case TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile when _policy.LeaveInArchive?.Contains(name) == true:
                return LeaveInArchive(parent.Fd, leaf, entry, what, name, bytesSoFar);
            case TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile:
                return await WriteFileAsync(parent.Fd, leaf, entry, what, bytesSoFar, ct).ConfigureAwait(false);
            case TarEntryType.SymbolicLink:
                RequireLinks(what, entry);
                ReplaceNonDirectory(parent.Fd, leaf, what, entry.Name);
                Check(Interop.SymlinkAt(entry.LinkName, parent.Fd, leaf), what, entry.Name, "symlink");
                ApplyOwnerAt(parent.Fd, leaf, entry, what);
                ApplyXattrs(null, parent.Fd, leaf, entry, what);
                SetTimesAt(parent.Fd, leaf, entry.ModificationTime, what, entry.Name);
                return 0;
            case TarEntryType.HardLink:
                RequireLinks(what, entry);
                MakeHardLink(parent.Fd, leaf, entry, what);
                return 0;
            case TarEntryType.CharacterDevice or TarEntryType.BlockDevice or TarEntryType.Fifo:
                if (!_policy.AllowDevices)
                {
                    throw Refuse(what, entry.Name, $"a {Describe(entry.EntryType)} is not allowed here");
                }

                ReplaceNonDirectory(parent.Fd, leaf, what, entry.Name);
                var type = entry.EntryType switch
                {
                    TarEntryType.CharacterDevice => Interop.S_IFCHR,
                    TarEntryType.BlockDevice => Interop.S_IFBLK,
                    _ => Interop.S_IFIFO,
                };
                Check(Interop.MknodAt(parent.Fd, leaf, type | ((uint)entry.Mode & 0xfff), Interop.MakeDev(entry is PosixTarEntry px ? (uint)px.DeviceMajor : 0, entry is PosixTarEntry pn ? (uint)pn.DeviceMinor : 0)),
                    what, entry.Name, "mknod");
                ApplyOwnerAt(parent.Fd, leaf, entry, what);
                Check(Interop.FchmodAt(parent.Fd, leaf, (uint)entry.Mode & 0xfff, 0), what, entry.Name, "chmod");
                SetTimesAt(parent.Fd, leaf, entry.ModificationTime, what, entry.Name);
                return 0;
            default:
                throw Refuse(what, entry.Name, $"entry type {entry.EntryType} is not supported");
        }
    }

    private void ApplyWhiteout(TarEntry entry, string what, string parentPath, string leaf)
    {
        if (_policy.Whiteouts == WhiteoutMode.Reject)
        {
            throw Refuse(what, entry.Name, "whiteout entries are not allowed here");
        }

        using var parent = OpenParent(parentPath, what, entry.Name, create: true);
        if (leaf == OpaqueMarker)
        {
            if (_policy.Whiteouts == WhiteoutMode.Overlay)
            {
                SetXattr(parent.Fd, "trusted.overlay.opaque", "y"u8, what, entry.Name);
            }
            else
            {
                // Applied onto a tree: an opaque directory hides everything below it that came before.
                RemoveChildren(parent.Fd, what, entry.Name);
            }

            return;
        }

        var hidden = leaf[WhiteoutPrefix.Length..];
        if (hidden.Length == 0 || hidden is "." or "..")
        {
            throw Refuse(what, entry.Name, "a whiteout must name a file");
        }

        if (_policy.Whiteouts == WhiteoutMode.Overlay)
        {
            ReplaceNonDirectory(parent.Fd, hidden, what, entry.Name);
            Check(Interop.MknodAt(parent.Fd, hidden, Interop.S_IFCHR, 0), what, entry.Name, "mknod (whiteout)");
        }
        else
        {
            RemoveTree(parent.Fd, hidden, what, entry.Name);
        }
    }

    private void MakeDirectory(int parent, string leaf, TarEntry entry, string what, string path)
    {
        var existing = Interop.TypeAt(parent, leaf);
        if (existing != 0 && existing != Interop.S_IFDIR)
        {
            Check(Interop.UnlinkAt(parent, leaf, 0), what, entry.Name, "unlink");
            existing = 0;
        }

        if (existing == 0)
        {
            Check(Interop.MkdirAt(parent, leaf, 0x1C0 /* 0700 */), what, entry.Name, "mkdir");
        }

        var fd = Interop.OpenAt(parent, leaf, Interop.O_RDONLY | Interop.O_DIRECTORY | Interop.O_NOFOLLOW | Interop.O_CLOEXEC, 0);
        Check(fd, what, entry.Name, "open directory");
        try
        {
            ApplyOwner(fd, entry, what);
            Check(Interop.Fchmod(fd, (uint)entry.Mode & 0xfff), what, entry.Name, "chmod");
            ApplyXattrs(fd, -1, null, entry, what);
        }
        finally
        {
            _ = Interop.Close(fd);
        }

        _directoryTimes.Add((path, entry.ModificationTime));
    }

    /// <summary>
    /// A file the caller serves from the archive: nothing is written (an earlier entry of the same name is removed, as
    /// a later entry replaces it when written), and a second entry of the name is refused, since which of the two the
    /// caller would serve is not known.
    /// </summary>
    private long LeaveInArchive(int parent, string leaf, TarEntry entry, string what, string name, long bytesSoFar)
    {
        if (entry.Length < 0 || bytesSoFar + entry.Length > _policy.MaxBytes)
        {
            throw Refuse(what, entry.Name, $"the archive expands to more than {_policy.MaxBytes} bytes, the configured limit"
                + (_policy.MaxBytesSetting is { } setting ? $" ({setting})" : ""));
        }

        if (_left.Any(f => f.Name == name))
        {
            throw Refuse(what, entry.Name, "the archive holds this file twice");
        }

        ReplaceNonDirectory(parent, leaf, what, entry.Name);
        _left.Add(new ArchivedFile(name, entry.Length));
        return entry.Length;
    }

    private async Task<long> WriteFileAsync(int parent, string leaf, TarEntry entry, string what, long bytesSoFar, CancellationToken ct)
    {
        if (entry.Length < 0 || bytesSoFar + entry.Length > _policy.MaxBytes)
        {
            throw Refuse(what, entry.Name, $"the archive expands to more than {_policy.MaxBytes} bytes, the configured limit"
                + (_policy.MaxBytesSetting is { } setting ? $" ({setting})" : ""));
        }

        // The header declares the entry's size: one that would not fit is refused before a byte of it is written.
        if (_policy.Disk is { } disk && !disk.TryTake(entry.Length))
        {
            throw new CrestException(ErrorKind.ResourceExhausted,
                $"{what} was refused at entry \"{entry.Name}\" ({entry.Length} bytes): the archive expands to at least {bytesSoFar + entry.Length} bytes, "
                + $"more than {disk.Describe()}; free space on the node or lower the reserve");
        }

        ReplaceNonDirectory(parent, leaf, what, entry.Name);
        var fd = Interop.OpenAt(parent, leaf, Interop.O_WRONLY | Interop.O_CREAT | Interop.O_EXCL | Interop.O_NOFOLLOW | Interop.O_CLOEXEC, 0x180 /* 0600 */);
        Check(fd, what, entry.Name, "create");
        using var handle = new SafeFileHandle(fd, ownsHandle: true);
        await using var file = new FileStream(handle, FileAccess.Write, bufferSize: 0);
        long written = 0;
        if (entry.DataStream is { } data)
        {
            var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(128 * 1024);
            try
            {
                int n;
                while ((n = await data.ReadAsync(buffer, ct).ConfigureAwait(false)) > 0)
                {
                    written += n;
                    if (written > entry.Length)
                    {
                        throw Refuse(what, entry.Name, "the entry holds more data than its header declares");
                    }

                    CheckExpansion(what, entry.Name, bytesSoFar + written);

                    try
                    {
                        await file.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                    }
                    catch (IOException e)
                    {
                        throw new CrestException(ErrorKind.ResourceExhausted, $"writing {entry.Name} from {what} into {_rootPath} failed: {e.Message}", e);
                    }
                }
            }
            catch (Exception e) when (e is InvalidDataException or EndOfStreamException or InvalidOperationException or FormatException)
            {
                throw Refuse(what, entry.Name, $"the data is truncated or corrupt ({e.Message})");
            }
            finally
            {
                System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
            }
        }

        if (written != entry.Length)
        {
            throw Refuse(what, entry.Name, $"the archive ends inside this entry ({written} of {entry.Length} bytes)");
        }

        // Owner before mode: chown clears setuid and setgid bits. All on the descriptor we created.
        ApplyOwner(fd, entry, what);
        Check(Interop.Fchmod(fd, (uint)entry.Mode & 0xfff), what, entry.Name, "chmod");
        ApplyXattrs(fd, -1, null, entry, what);
        SetTimes(fd, entry.ModificationTime, what, entry.Name);
        return written;
    }

    private void MakeHardLink(int parent, string leaf, TarEntry entry, string what)
    {
        string target;
        try
        {
            target = NormalizeName(entry.LinkName, _policy.MaxPathLength);
        }
        catch (FormatException e)
        {
            throw Refuse(what, entry.Name, $"hard link target \"{entry.LinkName}\": {e.Message}");
        }

        if (target.Length == 0)
        {
            throw Refuse(what, entry.Name, "a hard link must name a file");
        }

        var (targetParentPath, targetLeaf) = Split(target);
        using var targetParent = OpenParent(targetParentPath, what, entry.Name, create: false);
        var type = Interop.TypeAt(targetParent.Fd, targetLeaf);
        if (type == 0)
        {
            throw Refuse(what, entry.Name, $"hard link target \"{entry.LinkName}\" does not exist in the archive before it");
        }

        if (type == Interop.S_IFDIR)
        {
            throw Refuse(what, entry.Name, $"hard link target \"{entry.LinkName}\" is a directory");
        }

        ReplaceNonDirectory(parent, leaf, what, entry.Name);
        Check(Interop.LinkAt(targetParent.Fd, targetLeaf, parent, leaf, 0), what, entry.Name, "link");
    }

    private void ReplaceNonDirectory(int parent, string leaf, string what, string entryName)
    {
        var existing = Interop.TypeAt(parent, leaf);
        if (existing == 0)
        {
            return;
        }

        if (existing == Interop.S_IFDIR)
        {
            RemoveTree(parent, leaf, what, entryName);
            return;
        }

        Check(Interop.UnlinkAt(parent, leaf, 0), what, entryName, "unlink");
    }

    private void RemoveTree(int parent, string leaf, string what, string entryName)
    {
        var type = Interop.TypeAt(parent, leaf);
        if (type == 0)
        {
            return;
        }

        if (type == Interop.S_IFDIR)
        {
            var fd = Interop.OpenAt(parent, leaf, Interop.O_RDONLY | Interop.O_DIRECTORY | Interop.O_NOFOLLOW | Interop.O_CLOEXEC, 0);
            Check(fd, what, entryName, "open directory");
            try
            {
                RemoveChildren(fd, what, entryName);
            }
            finally
            {
                _ = Interop.Close(fd);
            }

            Check(Interop.UnlinkAt(parent, leaf, Interop.AT_REMOVEDIR), what, entryName, "rmdir");
        }
        else
        {
            Check(Interop.UnlinkAt(parent, leaf, 0), what, entryName, "unlink");
        }
    }

    private void RemoveChildren(int dirFd, string what, string entryName)
    {
        // Listing through /proc/self/fd keeps the walk on the handle we hold, not on a path a link could redirect.
        foreach (var child in Directory.EnumerateFileSystemEntries($"/proc/self/fd/{dirFd}"))
        {
            RemoveTree(dirFd, Path.GetFileName(child), what, entryName);
        }
    }

    private DirHandle OpenParent(string parentPath, string what, string entryName, bool create)
    {
        if (parentPath.Length == 0)
        {
            return new DirHandle(Interop.OpenAt(_root, ".", Interop.O_PATH | Interop.O_DIRECTORY | Interop.O_CLOEXEC, 0));
        }

        var fd = Interop.Openat2(_root, parentPath, (ulong)(Interop.O_PATH | Interop.O_DIRECTORY | Interop.O_CLOEXEC), Resolve);
        if (fd >= 0)
        {
            return new DirHandle(fd);
        }

        var errno = Marshal.GetLastPInvokeError();
        if (errno == Interop.ENOENT && create)
        {
            // Archives may omit directory entries: make the missing ones, one component at a time, never through a link.
            var current = Interop.OpenAt(_root, ".", Interop.O_PATH | Interop.O_DIRECTORY | Interop.O_CLOEXEC, 0);
            foreach (var part in parentPath.Split('/'))
            {
                if (Interop.TypeAt(current, part) == 0 && Interop.MkdirAt(current, part, 0x1ED /* 0755 */) != 0 && Marshal.GetLastPInvokeError() != Interop.EEXIST)
                {
                    var message = Interop.Errno();
                    _ = Interop.Close(current);
                    throw Refuse(what, entryName, $"cannot create directory {part}: {message}");
                }

                var next = Interop.Openat2(current, part, (ulong)(Interop.O_PATH | Interop.O_DIRECTORY | Interop.O_CLOEXEC), Resolve);
                var nextErrno = Marshal.GetLastPInvokeError();
                _ = Interop.Close(current);
                if (next < 0)
                {
                    throw Refuse(what, entryName, ParentProblem(nextErrno, parentPath));
                }

                current = next;
            }

            return new DirHandle(current);
        }

        throw Refuse(what, entryName, ParentProblem(errno, parentPath));
    }

    private static string ParentProblem(int errno, string parentPath) => errno switch
    {
        Interop.ELOOP or Interop.EXDEV or Interop.EAGAIN => $"its parent \"{parentPath}\" passes through a symbolic link; links are never followed during extraction",
        Interop.ENOTDIR => $"its parent \"{parentPath}\" is not a directory",
        Interop.ENOENT => $"its parent \"{parentPath}\" does not exist",
        _ => $"its parent \"{parentPath}\" cannot be opened: {Marshal.GetPInvokeErrorMessage(errno)}",
    };

    private void RequireLinks(string what, TarEntry entry)
    {
        if (!_policy.AllowLinks)
        {
            throw Refuse(what, entry.Name, $"a {Describe(entry.EntryType)} is not allowed here");
        }
    }

    private void ApplyOwner(int fd, TarEntry entry, string what)
    {
        if (_policy.ApplyOwners)
        {
            Check(Interop.Fchown(fd, (uint)entry.Uid, (uint)entry.Gid), what, entry.Name, "chown");
        }
    }

    private void ApplyOwnerAt(int parent, string leaf, TarEntry entry, string what)
    {
        if (_policy.ApplyOwners)
        {
            Check(Interop.FchownAt(parent, leaf, (uint)entry.Uid, (uint)entry.Gid, Interop.AT_SYMLINK_NOFOLLOW), what, entry.Name, "chown");
        }
    }

    private unsafe void ApplyXattrs(int? fd, int parent, string? leaf, TarEntry entry, string what)
    {
        if (entry is not PaxTarEntry pax || !_policy.ApplyOwners)
        {
            return;
        }

        foreach (var (key, value) in pax.ExtendedAttributes)
        {
            if (!key.StartsWith("SCHILY.xattr.", StringComparison.Ordinal))
            {
                continue;
            }

            var name = key["SCHILY.xattr.".Length..];
            // Overlay's own attributes would let a layer forge opaque directories or redirects; SELinux labels are the host's business.
            if (name.StartsWith("trusted.overlay.", StringComparison.Ordinal) || name.StartsWith("security.selinux", StringComparison.Ordinal))
            {
                continue;
            }

            // PAX stores the raw bytes as Latin-1-ish characters; recover them one byte per char.
            var bytes = value.Select(c => (byte)c).ToArray();
            fixed (byte* p = bytes)
            {
                var rc = fd is { } f
                    ? Interop.Fsetxattr(f, name, p, (nuint)bytes.Length, 0)
                    : Interop.Lsetxattr($"/proc/self/fd/{parent}/{leaf}", name, p, (nuint)bytes.Length, 0);
                Check(rc, what, entry.Name, $"setxattr {name}");
            }
        }
    }

    private unsafe void SetXattr(int dirPathFd, string name, ReadOnlySpan<byte> value, string what, string entryName)
    {
        var fd = Interop.OpenAt(dirPathFd, ".", Interop.O_RDONLY | Interop.O_DIRECTORY | Interop.O_CLOEXEC, 0);
        Check(fd, what, entryName, "open directory");
        try
        {
            fixed (byte* p = value)
            {
                Check(Interop.Fsetxattr(fd, name, p, (nuint)value.Length, 0), what, entryName, $"setxattr {name}");
            }
        }
        finally
        {
            _ = Interop.Close(fd);
        }
    }

    private static unsafe void SetTimes(int fd, DateTimeOffset modified, string what, string entryName)
    {
        var times = stackalloc Interop.Timespec[2];
        times[0] = times[1] = ToTimespec(modified);
        Check(Interop.Futimens(fd, times), what, entryName, "utimens");
    }

    private static unsafe void SetTimesAt(int parent, string leaf, DateTimeOffset modified, string what, string entryName)
    {
        var times = stackalloc Interop.Timespec[2];
        times[0] = times[1] = ToTimespec(modified);
        Check(Interop.UtimensAt(parent, leaf, times, Interop.AT_SYMLINK_NOFOLLOW), what, entryName, "utimens");
    }

    private void SetTimesAt(string path, DateTimeOffset modified)
    {
        var (parentPath, leaf) = Split(path);
        var parent = parentPath.Length == 0
            ? Interop.OpenAt(_root, ".", Interop.O_PATH | Interop.O_DIRECTORY | Interop.O_CLOEXEC, 0)
            : Interop.Openat2(_root, parentPath, (ulong)(Interop.O_PATH | Interop.O_DIRECTORY | Interop.O_CLOEXEC), Resolve);
        if (parent < 0)
        {
            return; // removed by a later whiteout or entry
        }

        try
        {
            SetTimesAt(parent, leaf, modified, _rootPath, path);
        }
        catch (CrestException)
        {
            // A later entry replaced it; its time is not worth failing the layer for.
        }
        finally
        {
            _ = Interop.Close(parent);
        }
    }

    private static Interop.Timespec ToTimespec(DateTimeOffset t)
    {
        var ticks = t.UtcTicks - DateTime.UnixEpoch.Ticks;
        return new Interop.Timespec { Seconds = Math.DivRem(ticks, TimeSpan.TicksPerSecond, out var rem), Nanoseconds = rem * 100 };
    }

    private static (string Parent, string Leaf) Split(string path)
    {
        var slash = path.LastIndexOf('/');
        return slash < 0 ? ("", path) : (path[..slash], path[(slash + 1)..]);
    }

    private static string Describe(TarEntryType type) => type switch
    {
        TarEntryType.SymbolicLink => "symbolic link",
        TarEntryType.HardLink => "hard link",
        TarEntryType.CharacterDevice => "character device",
        TarEntryType.BlockDevice => "block device",
        TarEntryType.Fifo => "FIFO",
        _ => type.ToString(),
    };

    private static void Check(int rc, string what, string entryName, string operation)
    {
        if (rc < 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            var kind = errno == Interop.ENOSPC ? ErrorKind.ResourceExhausted : ErrorKind.Internal;
            throw new CrestException(kind, $"extracting {what}: entry \"{entryName}\": {operation} failed: {Marshal.GetPInvokeErrorMessage(errno)}");
        }
    }

    /// <summary>Refuses, before the bytes are written, an archive that has grown too far beyond the compressed bytes read for it.</summary>
    private void CheckExpansion(string what, string entryName, long total)
    {
        if (_policy.MaxExpansionRatio <= 0 || _compressedBytesRead is null || total <= _policy.RatioCheckFloorBytes)
        {
            return;
        }

        var compressed = Math.Max(1, _compressedBytesRead());
        if (total > compressed * _policy.MaxExpansionRatio)
        {
            throw Refuse(what, entryName,
                $"the archive expands to more than {total} bytes from {compressed} compressed bytes, more than {_policy.RatioSetting} = {_policy.MaxExpansionRatio} allows; "
                + "raise it for an archive you trust");
        }
    }

    private static CrestException Refuse(string what, string? entryName, string why) =>
        new(ErrorKind.InvalidArgument, entryName is null ? $"{what} was refused: {why}" : $"{what} was refused at entry \"{entryName}\": {why}");

    private readonly struct DirHandle(int fd) : IDisposable
    {
        public int Fd { get; } = fd;

        public void Dispose() => _ = Interop.Close(Fd);
    }
}
