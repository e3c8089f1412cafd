using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Linux;
using Crest.Runtime;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace Crest.Checkpoint;

/// <summary>How a restore from a plain archive serves CRIU's page images ([restore] pages_in_place*).</summary>
public sealed record ArchivePagesOptions
{
    public bool Enabled { get; init; } = true;

    /// <summary>Page images smaller than this in all are written out: under it the copy costs less than the mount.</summary>
    public long MinimumBytes { get; init; } = 32L << 20;

    /// <summary>erofs-utils' mkfs.erofs (1.7 or later: <c>--tar=i</c>), found on PATH.</summary>
    public string MkfsErofsPath { get; init; } = "mkfs.erofs";
}

/// <summary>
/// <c>mkfs.erofs --quiet --tar=i IMAGE TARBALL</c>: an erofs image of the tarball's metadata alone, whose files point
/// at their data where the tarball holds it (the tarball becomes the image's second device).
/// </summary>
public sealed record ErofsTarIndexCommand(string MkfsErofs, string Image, string Tarball)
{
    public CommandLine ToCommandLine() => new(MkfsErofs, ["--quiet", "--tar=i", Image, Tarball]);
}

/// <summary>
/// Serves a plain checkpoint archive's page images in place, so that restoring a container with a gigabyte of memory
/// does not first write that gigabyte to disk: <c>mkfs.erofs --tar=i</c> indexes the archive (metadata only, a few KiB,
/// milliseconds), the index is mounted read-only with the archive as its data device (<c>erofs</c> backed by files,
/// Linux 6.12), and each page image in the staging directory becomes a relative link into that mount, which CRIU
/// follows. Both the index and the mount read the archive through the descriptor the reader validated it with.
/// <para>
/// mkfs.erofs parses the tar on its own and can see what the reader did not: the two parsers differ in corners (the
/// reader offers no archive with a global header or data after its end, which narrows that, no more), and the file may
/// be rewritten in place meanwhile. So nothing of the index is trusted, and this is the guarantee: the mount follows no
/// symlink (nosymfollow), and each page image must be a regular file of the size the reader saw, reached from the
/// mount's root through directories only (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV). What the
/// index can still change is the bytes of the page images: the archive's own memory contents.
/// </para>
/// <para>
/// Only page images come from the mount: the raw memory of the checkpointed process, which no policy check reads.
/// Every other file, the ones the restore policy and CRIU's process tree come from, was written out by the
/// reader as before. The mount lives in the staging directory (<c>.archive-pages/</c>, its index beside it) and moves
/// with it into the container's restore directory; whoever deletes a restore directory unmounts what is under it first
/// (<see cref="ContainerBundles.DeleteRestoreDirectory"/>).
/// </para>
/// A node that cannot (no mkfs.erofs, a kernel without erofs backed by files) answers false, and the reader writes the
/// pages out as before; the reason is logged once.
/// </summary>
public sealed partial class ArchivePageMounts(ArchivePagesOptions options, ICommandRunner commands, ILinux linux, ILogger<ArchivePageMounts> logger) : IArchivePagesInPlace
{
    /// <summary>The mount point in a staging directory; an archive holding this name is written out instead.</summary>
    public const string MountDirectory = ".archive-pages";

    /// <summary>The erofs index beside it.</summary>
    public const string IndexFile = ".archive-pages.erofs";

    private readonly Lock _gate = new();
    private string? _unavailable;
    private bool _checked;
    private volatile bool _mountedOnce;

    public long MinimumBytes => options.MinimumBytes;

    public async ValueTask<bool> AvailableAsync(CancellationToken ct) => await UnavailableAsync(ct).ConfigureAwait(false) is null;

    public async Task<bool> TryServeAsync(SafeFileHandle archive, string stagingDir, IReadOnlyList<ArchivedFile> files, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(archive);
        ArgumentNullException.ThrowIfNull(files);
        if (await UnavailableAsync(ct).ConfigureAwait(false) is not null)
        {
            return false;
        }

        var mount = Path.Combine(stagingDir, MountDirectory);
        var index = Path.Combine(stagingDir, IndexFile);
        if (Path.Exists(mount) || Path.Exists(index) || files.Any(f => Path.Exists(Path.Combine(stagingDir, f.Name))))
        {
            Log.NotServed(logger, stagingDir, $"the archive itself holds {MountDirectory}, {IndexFile} or a page image twice");
            return false;
        }

        var clock = System.Diagnostics.Stopwatch.StartNew();
        // The descriptor the reader opened (and validated the archive through), by its /proc name: mkfs.erofs and the
        // kernel read that very file, whatever is renamed over the archive's path meanwhile.
        var descriptor = archive.DangerousGetHandle().ToInt32();
        CommandResult indexed;
        try
        {
            indexed = await commands.RunAsync(new ErofsTarIndexCommand(options.MkfsErofsPath, index, $"/proc/{Environment.ProcessId}/fd/{descriptor}").ToCommandLine(), ct).ConfigureAwait(false);
        }
        catch (CrestException e)
        {
            Disable($"{options.MkfsErofsPath} cannot run: {e.Message}");
            DeleteIfPresent(index);
            return false;
        }

        if (indexed.ExitCode != 0)
        {
            // This archive's doing (mkfs.erofs reads tar more strictly than the reader), not the node's.
            Log.NotServed(logger, stagingDir, $"mkfs.erofs --tar=i exited {indexed.ExitCode}: {indexed.StandardError.Trim()}");
            DeleteIfPresent(index);
            return false;
        }

        var linked = new List<string>();
        try
        {
            Directory.CreateDirectory(mount, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            try
            {
                // No symlink on the mount is ever followed (nosymfollow): mkfs.erofs parses the tar on its own, and an entry
                // the reader did not see (after a lone zero block, say) must not turn a directory into a way out.
                linux.Mount(index, mount, "erofs", MountOptions.ReadOnly | MountOptions.NoDev | MountOptions.NoSuid | MountOptions.NoExec | MountOptions.NoSymFollow,
                    $"device=/proc/self/fd/{descriptor}");
                _mountedOnce = true;
            }
            catch (CrestException e) when (!_mountedOnce)
            {
                // Never mounted yet: a kernel without erofs, or without erofs backed by files (before 6.12, or built
                // without it). Once one has mounted, a failure is that archive's.
                Disable($"the kernel did not mount the erofs index: {e.Message}");
                throw;
            }

            foreach (var file in files)
            {
                // What the index says must be what the reader saw: a regular file of the same size, reached from the
                // mount's root through directories only, never through a link and never out of the mount.
                if (FileKinds.RegularFileLengthBeneath(mount, file.Name) != file.Length)
                {
                    throw new CrestException(ErrorKind.InvalidArgument, $"{file.Name} in the archive's index is not the regular file of {file.Length} bytes the archive declared");
                }

                var link = Path.Combine(stagingDir, file.Name);
                var up = string.Concat(Enumerable.Repeat("../", file.Name.Count(c => c == '/')));
                File.CreateSymbolicLink(link, up + MountDirectory + "/" + file.Name);
                linked.Add(link);
            }

            Log.Served(logger, stagingDir, files.Count, files.Sum(f => f.Length), clock.ElapsedMilliseconds);
            return true;
        }
        catch (Exception e) when (e is CrestException or IOException or UnauthorizedAccessException)
        {
            Log.NotServed(logger, stagingDir, e.Message);
            foreach (var link in linked)
            {
                File.Delete(link);
            }

            Release(stagingDir);
            return false;
        }
    }

    /// <summary>Unmounts the page mount of a staging or restore directory, if it has one, and removes it and its index.</summary>
    public void Release(string dir)
    {
        var mount = Path.Combine(dir, MountDirectory);
        linux.Unmount(mount);
        if (Directory.Exists(mount) && linux.MountsUnder(mount).Count == 0)
        {
            Directory.Delete(mount);
        }

        DeleteIfPresent(Path.Combine(dir, IndexFile));
    }

    /// <summary>
    /// Why this node serves no pages in place, or null. The first restore that could use it checks for mkfs.erofs 1.7 or
    /// later (<c>--tar=i</c>; Debian 12 has 1.5); what is missing is logged once.
    /// </summary>
    private async Task<string?> UnavailableAsync(CancellationToken ct)
    {
        if (!options.Enabled)
        {
            return "[restore] pages_in_place = false";
        }

        lock (_gate)
        {
            if (_unavailable is not null || _checked)
            {
                return _unavailable;
            }
        }

        string? why = null;
        if (ExecutableSearch.Resolve(options.MkfsErofsPath) is null)
        {
            why = $"{options.MkfsErofsPath} (erofs-utils 1.7 or later) is not installed";
        }
        else
        {
            try
            {
                var version = await commands.RunAsync(new CommandLine(options.MkfsErofsPath, ["--version"]), ct).ConfigureAwait(false);
                // "mkfs.erofs (erofs-utils) 1.9.4": the third word of the first line.
                var words = version.StandardOutput.Split('\n', 2)[0].Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (version.ExitCode != 0 || words.Length < 3 || !Version.TryParse(words[2].Split('-', '+', '~')[0], out var v) || v < new Version(1, 7))
                {
                    why = $"{options.MkfsErofsPath} is not erofs-utils 1.7 or later (it says \"{version.StandardOutput.Trim()}\"), which --tar=i needs";
                }
            }
            catch (CrestException e)
            {
                why = $"{options.MkfsErofsPath} cannot run: {e.Message}";
            }
        }

        lock (_gate)
        {
            _checked = true;
        }

        if (why is not null)
        {
            Disable(why);
        }

        return why;
    }

    /// <summary>A node that failed once fails again: the rest of this crestd's restores write their pages out (logged once).</summary>
    private void Disable(string why)
    {
        lock (_gate)
        {
            if (_unavailable is not null)
            {
                return;
            }

            _unavailable = why;
        }

        Log.Disabled(logger, why);
    }

    private static void DeleteIfPresent(string path)
    {
        if (File.Exists(path))
        {
            File.Delete(path);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(462, LogLevel.Information, "restore staging {Staging}: {Files} page images ({Bytes} bytes) are read where the archive holds them (erofs index mounted in {Milliseconds} ms)")]
        public static partial void Served(ILogger logger, string staging, int files, long bytes, long milliseconds);

        [LoggerMessage(463, LogLevel.Information, "restore staging {Staging}: the page images are written out ({Reason})")]
        public static partial void NotServed(ILogger logger, string staging, string reason);

        [LoggerMessage(464, LogLevel.Warning, "restores write archives' page images out from now on, as this node cannot serve them in place: {Reason}")]
        public static partial void Disabled(ILogger logger, string reason);
    }
}
