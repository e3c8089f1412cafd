using System.Formats.Tar;
using Crest.Checkpoint;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Linux;
using Crest.Runtime;
using Crest.TestKit;
using Crest.UnitTests.Fakes;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Win32.SafeHandles;

namespace Crest.UnitTests;

// A plain archive's page images served where the archive holds them (IArchivePagesInPlace), and the reader's way back
// to writing them out.
public partial class CheckpointTests
{
    /// <summary>Serves page images by copying them from the archive into a directory of its own and linking them, as the mount would.</summary>
    private sealed class CopyingPageServer(long minimum, bool serves, bool available = true) : IArchivePagesInPlace
    {
        public List<IReadOnlyList<ArchivedFile>> Offers { get; } = [];

        public long MinimumBytes => minimum;

        public ValueTask<bool> AvailableAsync(CancellationToken ct) => ValueTask.FromResult(available);

        public async Task<bool> TryServeAsync(SafeFileHandle archive, string stagingDir, IReadOnlyList<ArchivedFile> files, CancellationToken ct)
        {
            Offers.Add(files);
            if (!serves)
            {
                return false;
            }

            // The handle is the archive the reader validated: read the pages out of it, as the kernel would.
            var served = Path.Combine(stagingDir, "served");
            Directory.CreateDirectory(served);
            await using var tar = new FileStream(new SafeFileHandle(archive.DangerousGetHandle(), ownsHandle: false), FileAccess.Read);
            tar.Seek(0, SeekOrigin.Begin);
            using var reader = new System.Formats.Tar.TarReader(tar, leaveOpen: true);
            while (await reader.GetNextEntryAsync(copyData: false, ct) is { } entry)
            {
                if (files.Any(f => f.Name == SafeExtractor.NormalizeName(entry.Name)))
                {
                    var copy = Path.Combine(served, Path.GetFileName(entry.Name));
                    await using (var output = File.Create(copy))
                    {
                        await entry.DataStream!.CopyToAsync(output, ct);
                    }

                    File.CreateSymbolicLink(Path.Combine(stagingDir, SafeExtractor.NormalizeName(entry.Name)), copy);
                }
            }

            return true;
        }
    }

    private static Dictionary<string, byte[]> WithPages(params (int Id, int Bytes)[] pages)
    {
        var files = ContainerdFiles();
        foreach (var (id, bytes) in pages)
        {
            files[$"checkpoint/pages-{id}.img"] = Enumerable.Range(0, bytes).Select(i => (byte)(i * id)).ToArray();
        }

        return files;
    }

    [Theory]
    [InlineData("checkpoint/pages-1.img", true)]
    [InlineData("checkpoint/pages-12.img", true)]
    [InlineData("checkpoint/pages-.img", false)]
    [InlineData("checkpoint/pages-1a.img", false)]
    [InlineData("checkpoint/pagemap-1.img", false)]
    [InlineData("checkpoint/sub/pages-1.img", false)]
    [InlineData("pages-1.img", false)]
    public void Only_criu_page_images_are_page_images(string name, bool expected) => Assert.Equal(expected, CheckpointFiles.IsPageImage(name));

    [Fact]
    public async Task A_plain_archive_offers_its_page_images_and_the_plan_counts_what_was_served()
    {
        using var layout = new Layout(Tar(WithPages((1, 3000), (2, 2000))));
        var server = new CopyingPageServer(minimum: 4000, serves: true);

        var plan = await new CheckpointReader(new RestoreLimits()).ReadArchiveAsync(layout.Archive, layout.Staging, Ct, server);

        var offer = Assert.Single(server.Offers);
        Assert.Equal(["checkpoint/pages-1.img", "checkpoint/pages-2.img"], offer.Select(f => f.Name).Order(StringComparer.Ordinal));
        Assert.Equal([3000L, 2000L], offer.OrderBy(f => f.Name, StringComparer.Ordinal).Select(f => f.Length));
        Assert.Equal(5000, plan.PagesServedInPlaceBytes);
        Assert.Equal(5000 + Inventory.Length, plan.CriuImageBytes);
        // What CRIU reads at the page images' names is the archive's bytes; the other images were written out.
        Assert.Equal(WithPages((1, 3000))["checkpoint/pages-1.img"], await File.ReadAllBytesAsync(Path.Combine(layout.Staging, "checkpoint/pages-1.img"), Ct));
        Assert.True(FileKinds.IsRegularFile(Path.Combine(layout.Staging, "checkpoint/inventory.img")));
    }

    [Fact]
    public async Task Pages_that_are_not_served_are_written_out_and_the_restore_reads_as_without_the_offer()
    {
        var files = WithPages((1, 5000));
        using var layout = new Layout(Tar(files));
        var server = new CopyingPageServer(minimum: 0, serves: false);

        var plan = await new CheckpointReader(new RestoreLimits()).ReadArchiveAsync(layout.Archive, layout.Staging, Ct, server);

        Assert.Single(server.Offers);
        Assert.Equal(0, plan.PagesServedInPlaceBytes);
        Assert.Equal(files["checkpoint/pages-1.img"], await File.ReadAllBytesAsync(Path.Combine(layout.Staging, "checkpoint/pages-1.img"), Ct));
        Assert.Null(new FileInfo(Path.Combine(layout.Staging, "checkpoint/pages-1.img")).LinkTarget);
        Assert.Equal(Utf8(ContainerdConfig()), await File.ReadAllBytesAsync(Path.Combine(layout.Staging, CheckpointFiles.ConfigDump), Ct));
    }

    [Theory]
    [InlineData("small", 4999)]
    [InlineData("gzip", 0)]
    [InlineData("zstd", 0)]
    public async Task Small_or_compressed_archives_are_not_offered(string kind, long minimum)
    {
        var plain = Tar(WithPages((1, 4000)));
        using var layout = new Layout(kind == "small" ? plain : Compress(plain, kind));
        var server = new CopyingPageServer(minimum, serves: true);

        var plan = await new CheckpointReader(new RestoreLimits()).ReadArchiveAsync(layout.Archive, layout.Staging, Ct, server);

        Assert.Empty(server.Offers);
        Assert.Equal(0, plan.PagesServedInPlaceBytes);
        Assert.True(FileKinds.IsRegularFile(Path.Combine(layout.Staging, "checkpoint/pages-1.img")));
    }

    // ---- ArchivePageMounts above its seams: what it does when mkfs.erofs or the mount fails ----------------

    /// <summary>
    /// mkfs.erofs of <paramref name="version"/>: <c>--version</c> says it, and an index run answers <paramref name="exitCode"/>,
    /// writing the index it names when it succeeds.
    /// </summary>
    private sealed class MkfsErofs(int exitCode, string version = "1.9.4") : ICommandRunner
    {
        public List<CommandLine> Runs { get; } = [];

        public int VersionQueries { get; private set; }

        public Task<CommandResult> RunAsync(CommandLine command, CancellationToken ct)
        {
            if (command.Arguments is ["--version"])
            {
                VersionQueries++;
                return Task.FromResult(new CommandResult(0, $"mkfs.erofs (erofs-utils) {version}\navailable compressors: lz4\n", ""));
            }

            Runs.Add(command);
            if (exitCode == 0)
            {
                File.WriteAllBytes(command.Arguments[^2], [1, 2, 3]);
            }

            return Task.FromResult(new CommandResult(exitCode, "", exitCode == 0 ? "" : "tarerofs: invalid tar header"));
        }
    }

    private static ArchivePageMounts PageMounts(ICommandRunner commands, RecordingLinux linux) =>
        new(new ArchivePagesOptions { MkfsErofsPath = "/bin/true" }, commands, linux, NullLogger<ArchivePageMounts>.Instance);

    [Fact]
    public async Task An_archive_mkfs_erofs_refuses_is_written_out_and_the_next_one_is_offered_again()
    {
        using var dir = new TempDir();
        var staging = dir.CreateDirectory("staging");
        var mkfs = new MkfsErofs(exitCode: 1);
        var linux = new RecordingLinux();
        var mounts = PageMounts(mkfs, linux);
        using var archive = File.OpenHandle(dir.Combine("archive.tar"), FileMode.Create, FileAccess.ReadWrite);

        Assert.False(await mounts.TryServeAsync(archive, staging, [new ArchivedFile("checkpoint/pages-1.img", 10)], Ct));
        Assert.False(await mounts.TryServeAsync(archive, staging, [new ArchivedFile("checkpoint/pages-1.img", 10)], Ct));

        Assert.Equal(2, mkfs.Runs.Count);
        Assert.Equal(["--quiet", "--tar=i", Path.Combine(staging, ArchivePageMounts.IndexFile), $"/proc/{Environment.ProcessId}/fd/{archive.DangerousGetHandle()}"], mkfs.Runs[0].Arguments);
        Assert.DoesNotContain(linux.Calls, c => c.StartsWith("Mount", StringComparison.Ordinal));
        Assert.Empty(Directory.EnumerateFileSystemEntries(staging));
    }

    [Fact]
    public async Task A_node_that_cannot_mount_the_index_stops_offering_and_leaves_nothing_behind()
    {
        using var dir = new TempDir();
        var staging = dir.CreateDirectory("staging");
        var mkfs = new MkfsErofs(exitCode: 0);
        var linux = new RecordingLinux { FailMountOf = ArchivePageMounts.MountDirectory };
        var mounts = PageMounts(mkfs, linux);
        using var archive = File.OpenHandle(dir.Combine("archive.tar"), FileMode.Create, FileAccess.ReadWrite);

        Assert.False(await mounts.TryServeAsync(archive, staging, [new ArchivedFile("checkpoint/pages-1.img", 10)], Ct));
        Assert.Empty(Directory.EnumerateFileSystemEntries(staging));
        Assert.False(await mounts.TryServeAsync(archive, staging, [new ArchivedFile("checkpoint/pages-1.img", 10)], Ct));
        Assert.Single(mkfs.Runs);
    }

    [Fact]
    public async Task An_index_that_does_not_hold_the_declared_files_is_unmounted_and_nothing_is_linked()
    {
        using var dir = new TempDir();
        var staging = dir.CreateDirectory("staging");
        Directory.CreateDirectory(Path.Combine(staging, "checkpoint"));
        var linux = new RecordingLinux();
        var mounts = PageMounts(new MkfsErofs(exitCode: 0), linux);
        using var archive = File.OpenHandle(dir.Combine("archive.tar"), FileMode.Create, FileAccess.ReadWrite);

        // The fake mount shows an empty directory: the page image the reader saw in the archive is not in the index.
        Assert.False(await mounts.TryServeAsync(archive, staging, [new ArchivedFile("checkpoint/pages-1.img", 10)], Ct));

        // Read-only and following no symlink, over the reader's own descriptor of the archive, then let go.
        var mount = Path.Combine(staging, ArchivePageMounts.MountDirectory);
        Assert.Equal(("erofs", $"device=/proc/self/fd/{archive.DangerousGetHandle()}"), linux.MountedWith[mount]);
        Assert.Equal(MountOptions.ReadOnly | MountOptions.NoDev | MountOptions.NoSuid | MountOptions.NoExec | MountOptions.NoSymFollow, linux.MountedFlags[mount]);
        Assert.Contains($"Unmount {Path.Combine(staging, ArchivePageMounts.MountDirectory)}", linux.Calls);
        Assert.Empty(linux.Mounts);
        Assert.Equal([Path.Combine(staging, "checkpoint")], Directory.EnumerateFileSystemEntries(staging));
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(staging, "checkpoint")));
    }

    [Fact]
    public async Task An_archive_that_holds_the_mount_s_own_name_is_written_out()
    {
        using var dir = new TempDir();
        var staging = dir.CreateDirectory("staging");
        Directory.CreateDirectory(Path.Combine(staging, ArchivePageMounts.MountDirectory));
        var mkfs = new MkfsErofs(exitCode: 0);
        var mounts = PageMounts(mkfs, new RecordingLinux());
        using var archive = File.OpenHandle(dir.Combine("archive.tar"), FileMode.Create, FileAccess.ReadWrite);

        Assert.False(await mounts.TryServeAsync(archive, staging, [new ArchivedFile("checkpoint/pages-1.img", 10)], Ct));
        Assert.Empty(mkfs.Runs);
    }

    [Fact]
    public async Task An_erofs_utils_without_tar_index_mode_is_found_once_and_nothing_is_offered_to_it()
    {
        using var dir = new TempDir();
        var staging = dir.CreateDirectory("staging");
        var mkfs = new MkfsErofs(exitCode: 0, version: "1.5");
        var linux = new RecordingLinux();
        var mounts = PageMounts(mkfs, linux);
        using var archive = File.OpenHandle(dir.Combine("archive.tar"), FileMode.Create, FileAccess.ReadWrite);

        Assert.False(await mounts.TryServeAsync(archive, staging, [new ArchivedFile("checkpoint/pages-1.img", 10)], Ct));
        Assert.False(await mounts.TryServeAsync(archive, staging, [new ArchivedFile("checkpoint/pages-1.img", 10)], Ct));

        Assert.Equal(1, mkfs.VersionQueries);
        Assert.Empty(mkfs.Runs);
        Assert.Empty(linux.Calls);
    }

    /// <summary>A tar whose end marker is a lone zero block with <paramref name="after"/>'s entries behind it, as GNU tar and mkfs.erofs would read on.</summary>
    private static byte[] WithEntriesAfterALoneZeroBlock(byte[] archive, byte[] after) =>
        [.. archive.AsSpan(0, archive.Length - 1024), .. new byte[512], .. after];

    [Fact]
    public async Task An_archive_with_entries_behind_its_end_or_a_global_header_is_not_offered()
    {
        // What .NET's reader stops at, mkfs.erofs reads past: a directory there could become a link out of the mount.
        var hidden = WithEntriesAfterALoneZeroBlock(Tar(WithPages((1, 5000))), Tar(t => t.WriteEntry(new PaxTarEntry(TarEntryType.SymbolicLink, "checkpoint") { LinkName = "/var/lib" })));
        var global = Tar(t =>
        {
            t.WriteEntry(new PaxGlobalExtendedAttributesTarEntry(new Dictionary<string, string> { ["path"] = "checkpoint/pages-1.img" }));
            foreach (var (name, content) in WithPages((1, 5000)))
            {
                AddFile(t, name, content);
            }
        });

        foreach (var archive in new[] { hidden, global })
        {
            using var layout = new Layout(archive);
            var server = new CopyingPageServer(minimum: 0, serves: true);
            try
            {
                await new CheckpointReader(new RestoreLimits()).ReadArchiveAsync(layout.Archive, layout.Staging, Ct, server);
            }
            catch (CrestException)
            {
                // Refused by the reader itself is as good: nothing was offered either way.
            }

            Assert.Empty(server.Offers);
        }
    }

    [Fact]
    public async Task A_node_that_cannot_serve_pages_unpacks_in_one_pass_without_an_offer()
    {
        var files = WithPages((1, 5000));
        using var layout = new Layout(Tar(files));
        var server = new CopyingPageServer(minimum: 0, serves: true, available: false);

        await new CheckpointReader(new RestoreLimits()).ReadArchiveAsync(layout.Archive, layout.Staging, Ct, server);

        Assert.Empty(server.Offers);
        Assert.Equal(files["checkpoint/pages-1.img"], await File.ReadAllBytesAsync(Path.Combine(layout.Staging, "checkpoint/pages-1.img"), Ct));
    }

    [Fact]
    public async Task Once_an_index_has_mounted_a_later_mount_failure_is_that_archive_s_and_the_node_keeps_offering()
    {
        using var dir = new TempDir();
        var mkfs = new MkfsErofs(exitCode: 0);
        var linux = new RecordingLinux();
        var mounts = PageMounts(mkfs, linux);
        using var archive = File.OpenHandle(dir.Combine("archive.tar"), FileMode.Create, FileAccess.ReadWrite);
        string Staging(string name)
        {
            var staging = dir.CreateDirectory(name);
            Directory.CreateDirectory(Path.Combine(staging, "checkpoint"));
            return staging;
        }

        // Mounts (its index then lacks the file, so nothing is served), fails to mount, and is offered again.
        Assert.False(await mounts.TryServeAsync(archive, Staging("a"), [new ArchivedFile("checkpoint/pages-1.img", 10)], Ct));
        linux.FailMountOf = ArchivePageMounts.MountDirectory;
        Assert.False(await mounts.TryServeAsync(archive, Staging("b"), [new ArchivedFile("checkpoint/pages-1.img", 10)], Ct));
        linux.FailMountOf = null;
        Assert.False(await mounts.TryServeAsync(archive, Staging("c"), [new ArchivedFile("checkpoint/pages-1.img", 10)], Ct));

        Assert.Equal(3, mkfs.Runs.Count);
        Assert.True(await mounts.AvailableAsync(Ct));
    }
}
