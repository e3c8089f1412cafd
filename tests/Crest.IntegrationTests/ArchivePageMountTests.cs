using System.Formats.Tar;
using Crest.Checkpoint;
using Crest.Linux;
using Crest.Runtime;
using Crest.TestKit;
using Microsoft.Extensions.Logging.Abstractions;

namespace Crest.IntegrationTests;

/// <summary>
/// A plain archive's page images served in place with the real mkfs.erofs and the kernel's erofs backed by files: the
/// bytes at the page image's name are the archive's, read-only, through a mount that moves with its directory and goes
/// when released.
/// </summary>
public sealed class ArchivePageMountTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static readonly byte[] Pages = [.. Enumerable.Range(0, 3 << 20).Select(i => (byte)(i * 7 + (i >> 12)))];

    private static void RequireErofs()
    {
        Requires.Root();
        Requires.Binary("mkfs.erofs");
    }

    /// <summary>A tar as a checkpoint archive lays it out: a directory, a small image, the page image, a file after it.</summary>
    private static string WriteArchive(TempDir dir)
    {
        var path = dir.Combine("checkpoint.tar");
        using var file = File.Create(path);
        using var tar = new TarWriter(file, TarEntryFormat.Pax);
        tar.WriteEntry(new PaxTarEntry(TarEntryType.Directory, "checkpoint/") { Mode = (UnixFileMode)0x1C0 });
        tar.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, "checkpoint/inventory.img") { DataStream = new MemoryStream("inventory"u8.ToArray()) });
        tar.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, "checkpoint/pages-1.img") { DataStream = new MemoryStream(Pages), Mode = (UnixFileMode)0x180 });
        tar.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, "config.dump") { DataStream = new MemoryStream("{}"u8.ToArray()) });
        return path;
    }

    private static ArchivePageMounts Mounts(ILinux linux) =>
        new(new ArchivePagesOptions(), new ProcessCommandRunner(), linux, NullLogger<ArchivePageMounts>.Instance);

    private static IReadOnlyList<string> ErofsMountsUnder(string dir) =>
        [.. File.ReadLines("/proc/self/mountinfo").Where(l => l.Contains(" - erofs ", StringComparison.Ordinal)).Select(l => l.Split(' ')[4]).Where(m => m.StartsWith(dir, StringComparison.Ordinal))];

    [Fact]
    public async Task The_page_image_is_the_archive_s_bytes_read_only_and_the_mount_moves_with_its_directory_until_released()
    {
        RequireErofs();
        using var dir = new TempDir("crest-pages");
        var archive = WriteArchive(dir);
        var staging = dir.CreateDirectory("staging");
        Directory.CreateDirectory(Path.Combine(staging, "checkpoint"));
        var linux = new LinuxSyscalls();
        var mounts = Mounts(linux);
        var moved = dir.Combine("container-restore");
        try
        {
            using (var handle = File.OpenHandle(archive))
            {
                Assert.True(await mounts.TryServeAsync(handle, staging, [new ArchivedFile("checkpoint/pages-1.img", Pages.Length)], Ct));
            }

            var page = Path.Combine(staging, "checkpoint", "pages-1.img");
            Assert.Equal("../" + ArchivePageMounts.MountDirectory + "/checkpoint/pages-1.img", new FileInfo(page).LinkTarget);
            Assert.Equal(Pages, await File.ReadAllBytesAsync(page, Ct));
            Assert.Single(ErofsMountsUnder(staging));
            Assert.ThrowsAny<IOException>(() => File.WriteAllBytes(Path.Combine(staging, ArchivePageMounts.MountDirectory, "checkpoint", "pages-1.img"), [0]));

            // The archive's name may go (a restore's CreateContainer is done with it), and the directory moves into the
            // container: CRIU reads the same bytes through the relative link.
            File.Delete(archive);
            Directory.Move(staging, moved);
            Assert.Equal(Pages, await File.ReadAllBytesAsync(Path.Combine(moved, "checkpoint", "pages-1.img"), Ct));

            mounts.Release(moved);
            Assert.Empty(ErofsMountsUnder(dir.Path));
            Assert.False(Path.Exists(Path.Combine(moved, ArchivePageMounts.MountDirectory)));
            Assert.False(Path.Exists(Path.Combine(moved, ArchivePageMounts.IndexFile)));
        }
        finally
        {
            foreach (var m in ErofsMountsUnder(dir.Path))
            {
                linux.Unmount(m);
            }
        }
    }

    [Fact]
    public async Task A_page_image_the_index_does_not_hold_as_declared_is_not_served_and_nothing_stays_mounted()
    {
        RequireErofs();
        using var dir = new TempDir("crest-pages-bad");
        var archive = WriteArchive(dir);
        var linux = new LinuxSyscalls();
        var mounts = Mounts(linux);
        using var handle = File.OpenHandle(archive);

        // This node serves pages in place at all: a good offer mounts, and is let go.
        var good = dir.CreateDirectory("good");
        Directory.CreateDirectory(Path.Combine(good, "checkpoint"));
        Assert.True(await mounts.TryServeAsync(handle, good, [new ArchivedFile("checkpoint/pages-1.img", Pages.Length)], Ct));
        mounts.Release(good);

        // A size other than the archive's (what a tar rewritten between the reader and mkfs.erofs would show), and a
        // name the archive lacks.
        var staging = dir.CreateDirectory("staging");
        Directory.CreateDirectory(Path.Combine(staging, "checkpoint"));
        Assert.False(await mounts.TryServeAsync(handle, staging, [new ArchivedFile("checkpoint/pages-1.img", Pages.Length - 1)], Ct));
        Assert.False(await mounts.TryServeAsync(handle, staging, [new ArchivedFile("checkpoint/pages-2.img", 10)], Ct));

        Assert.Empty(ErofsMountsUnder(dir.Path));
        Assert.Equal([Path.Combine(staging, "checkpoint")], Directory.EnumerateFileSystemEntries(staging));
    }

    [Fact]
    public async Task Entries_only_mkfs_erofs_reads_cannot_lead_the_page_image_out_of_the_archive()
    {
        RequireErofs();
        using var dir = new TempDir("crest-pages-hidden");
        // A host file of the page image's size, and an archive whose checkpoint directory becomes a link to it in what
        // mkfs.erofs reads past a lone zero block (.NET's tar reader, and so the extractor, stops there).
        var secret = dir.CreateDirectory("secret");
        await File.WriteAllBytesAsync(Path.Combine(secret, "pages-1.img"), [.. Enumerable.Repeat((byte)0x5A, Pages.Length)], Ct);
        var plain = await File.ReadAllBytesAsync(WriteArchive(dir), Ct);
        using var trailer = new MemoryStream();
        using (var tar = new TarWriter(trailer, TarEntryFormat.Pax, leaveOpen: true))
        {
            tar.WriteEntry(new PaxTarEntry(TarEntryType.SymbolicLink, "checkpoint") { LinkName = secret });
        }

        var archive = dir.Combine("hostile.tar");
        await File.WriteAllBytesAsync(archive, [.. plain.AsSpan(0, plain.Length - 1024), .. new byte[512], .. trailer.ToArray()], Ct);
        var linux = new LinuxSyscalls();

        // The differential is real with this erofs-utils: its index holds checkpoint as the link.
        var probe = dir.CreateDirectory("probe");
        var index = dir.Combine("probe.erofs");
        var made = await new ProcessCommandRunner().RunAsync(new ErofsTarIndexCommand("mkfs.erofs", index, archive).ToCommandLine(), Ct);
        Assert.Equal(0, made.ExitCode);
        linux.Mount(index, probe, "erofs", MountOptions.ReadOnly, "device=" + archive);
        try
        {
            Assert.Equal(secret, new FileInfo(Path.Combine(probe, "checkpoint")).LinkTarget);
        }
        finally
        {
            linux.Unmount(probe);
        }

        var staging = dir.CreateDirectory("staging");
        Directory.CreateDirectory(Path.Combine(staging, "checkpoint"));
        using var handle = File.OpenHandle(archive);
        Assert.False(await Mounts(linux).TryServeAsync(handle, staging, [new ArchivedFile("checkpoint/pages-1.img", Pages.Length)], Ct));
        Assert.Empty(ErofsMountsUnder(dir.Path));
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(staging, "checkpoint")));
    }
}
