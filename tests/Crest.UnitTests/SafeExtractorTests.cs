using System.Formats.Tar;
using Crest.Core;
using Crest.Linux;
using Crest.TestKit;
using CsCheck;

namespace Crest.UnitTests;

public class SafeExtractorTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static MemoryStream Tar(Action<TarWriter> write)
    {
        var ms = new MemoryStream();
        using (var w = new TarWriter(ms, TarEntryFormat.Pax, leaveOpen: true))
        {
            write(w);
        }

        ms.Position = 0;
        return ms;
    }

    private static ExtractionPolicy Unprivileged => ExtractionPolicy.ImageLayer with { ApplyOwners = false, AllowDevices = false };

    [Theory]
    [InlineData("./a/b/", "a/b")]
    [InlineData("a//b/./c", "a/b/c")]
    [InlineData("./", "")]
    public void Names_are_normalised(string name, string expected) => Assert.Equal(expected, SafeExtractor.NormalizeName(name));

    [Theory]
    [InlineData("/etc/passwd")]
    [InlineData("../x")]
    [InlineData("a/../../x")]
    [InlineData("a/\0b")]
    public void Escaping_names_are_refused(string name) => Assert.Throws<FormatException>(() => SafeExtractor.NormalizeName(name));

    [Fact]
    public async Task Files_directories_and_links_are_written_beneath_the_root()
    {
        using var dir = new TempDir();
        using var x = new SafeExtractor(dir.Path, Unprivileged);

        var result = await x.ExtractAsync(Tar(t =>
        {
            TestImages.Dir(t, "etc");
            TestImages.File(t, "etc/hosts", "127.0.0.1 localhost\n"u8.ToArray(), mode: 0x1A4);
            TestImages.Symlink(t, "hosts", "etc/hosts");
            TestImages.HardLink(t, "etc/hosts2", "etc/hosts");
            TestImages.File(t, "deep/er/file", "x"u8.ToArray());
        }), "test archive", Ct);

        Assert.Equal(5, result.Entries);
        Assert.Equal("127.0.0.1 localhost\n", await File.ReadAllTextAsync(dir.Combine("etc/hosts"), Ct));
        Assert.Equal("etc/hosts", new FileInfo(dir.Combine("hosts")).LinkTarget);
        Assert.Equal("x", await File.ReadAllTextAsync(dir.Combine("deep/er/file"), Ct));
        Assert.Equal((UnixFileMode)0x1A4, File.GetUnixFileMode(dir.Combine("etc/hosts")));
    }

    [Fact]
    public async Task Files_left_in_the_archive_are_listed_not_written_and_count_towards_the_byte_cap()
    {
        using var dir = new TempDir();
        var policy = ExtractionPolicy.FilesOnly with { LeaveInArchive = new HashSet<string> { "checkpoint/pages-1.img" } };
        using var x = new SafeExtractor(dir.Path, policy);

        var result = await x.ExtractAsync(Tar(t =>
        {
            TestImages.File(t, "checkpoint/inventory.img", "inv"u8.ToArray());
            TestImages.File(t, "./checkpoint/pages-1.img", new byte[5000]);
        }), "test archive", Ct);

        Assert.Equal([new ArchivedFile("checkpoint/pages-1.img", 5000)], result.LeftInArchive);
        Assert.Equal(5003, result.Bytes);
        Assert.Equal("inv", await File.ReadAllTextAsync(dir.Combine("checkpoint/inventory.img"), Ct));
        Assert.False(Path.Exists(dir.Combine("checkpoint/pages-1.img")));

        using var capped = new TempDir();
        using var y = new SafeExtractor(capped.Path, policy with { MaxBytes = 4096 });
        var e = await Assert.ThrowsAsync<CrestException>(() => y.ExtractAsync(Tar(t => TestImages.File(t, "checkpoint/pages-1.img", new byte[5000])), "big archive", Ct));
        Assert.Contains("more than 4096 bytes", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_file_left_in_the_archive_replaces_an_earlier_entry_and_may_not_come_twice()
    {
        using var dir = new TempDir();
        var policy = ExtractionPolicy.FilesOnly with { LeaveInArchive = new HashSet<string> { "pages-1.img" } };
        using (var x = new SafeExtractor(dir.Path, policy with { LeaveInArchive = new HashSet<string>() }))
        {
            await x.ExtractAsync(Tar(t => TestImages.File(t, "pages-1.img", "old"u8.ToArray())), "first archive", Ct);
        }

        using (var x = new SafeExtractor(dir.Path, policy))
        {
            await x.ExtractAsync(Tar(t => TestImages.File(t, "pages-1.img", "new"u8.ToArray())), "second archive", Ct);
        }

        // What is served from the archive must be the archive's last word on the name, not a stale file.
        Assert.False(Path.Exists(dir.Combine("pages-1.img")));

        using var twice = new TempDir();
        using var z = new SafeExtractor(twice.Path, policy);
        var e = await Assert.ThrowsAsync<CrestException>(() => z.ExtractAsync(Tar(t =>
        {
            TestImages.File(t, "pages-1.img", "a"u8.ToArray());
            TestImages.File(t, "pages-1.img", "b"u8.ToArray());
        }), "doubled archive", Ct));
        Assert.Contains("holds this file twice", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_file_written_through_a_planted_symlink_is_refused()
    {
        using var dir = new TempDir();
        using var outside = new TempDir();
        using var x = new SafeExtractor(dir.Path, Unprivileged);

        var e = await Assert.ThrowsAsync<CrestException>(() => x.ExtractAsync(Tar(t =>
        {
            TestImages.Symlink(t, "escape", outside.Path);
            TestImages.File(t, "escape/pwned", "x"u8.ToArray());
        }), "hostile archive", Ct));

        Assert.Contains("passes through a symbolic link", e.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(outside.Path, "pwned")));
    }

    [Fact]
    public async Task A_relative_symlink_that_climbs_out_cannot_be_written_through_either()
    {
        using var dir = new TempDir();
        using var x = new SafeExtractor(dir.Path, Unprivileged);

        await Assert.ThrowsAsync<CrestException>(() => x.ExtractAsync(Tar(t =>
        {
            TestImages.Symlink(t, "up", "../../../../../../../../tmp");
            TestImages.File(t, "up/crest-pwned", "x"u8.ToArray());
        }), "hostile archive", Ct));

        Assert.False(File.Exists("/tmp/crest-pwned"));
    }

    [Fact]
    public async Task A_hard_link_to_a_file_outside_the_archive_is_refused()
    {
        using var dir = new TempDir();
        using var x = new SafeExtractor(dir.Path, Unprivileged);

        var e = await Assert.ThrowsAsync<CrestException>(() => x.ExtractAsync(Tar(t => TestImages.HardLink(t, "shadow", "../../../etc/shadow")), "hostile archive", Ct));

        Assert.Contains("hard link target", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_files_only_policy_refuses_links()
    {
        using var dir = new TempDir();
        using var x = new SafeExtractor(dir.Path, ExtractionPolicy.FilesOnly);

        var e = await Assert.ThrowsAsync<CrestException>(() => x.ExtractAsync(Tar(t => TestImages.Symlink(t, "container.log", "/etc/shadow")), "checkpoint", Ct));

        Assert.Contains("symbolic link is not allowed here", e.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(dir.Combine("container.log")));
    }

    [Fact]
    public async Task Entry_and_byte_caps_stop_an_expanding_archive()
    {
        using var dir = new TempDir();
        using var few = new SafeExtractor(dir.CreateDirectory("a"), Unprivileged with { MaxEntries = 3 });
        using var small = new SafeExtractor(dir.CreateDirectory("b"), Unprivileged with { MaxBytes = 1000 });

        var entries = await Assert.ThrowsAsync<CrestException>(() => few.ExtractAsync(Tar(t =>
        {
            for (var i = 0; i < 10; i++)
            {
                TestImages.File(t, $"f{i}", []);
            }
        }), "bomb", Ct));
        var bytes = await Assert.ThrowsAsync<CrestException>(() => small.ExtractAsync(Tar(t => TestImages.File(t, "big", new byte[5000])), "bomb", Ct));

        Assert.Contains("more than 3 entries", entries.Message, StringComparison.Ordinal);
        Assert.Contains("more than 1000 bytes", bytes.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_truncated_archive_is_an_error()
    {
        using var dir = new TempDir();
        using var x = new SafeExtractor(dir.Path, Unprivileged);
        var full = Tar(t => TestImages.File(t, "f", new byte[4096])).ToArray();

        var e = await Assert.ThrowsAsync<CrestException>(() => x.ExtractAsync(new MemoryStream(full[..1500]), "truncated", Ct));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
    }

    [Fact]
    public async Task Whiteouts_delete_below_when_applied_onto_a_tree()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.Combine("motd"), "x");
        Directory.CreateDirectory(dir.Combine("data"));
        File.WriteAllText(dir.Combine("data/old"), "x");
        using var x = new SafeExtractor(dir.Path, Unprivileged with { Whiteouts = WhiteoutMode.Delete });

        await x.ExtractAsync(Tar(t =>
        {
            TestImages.Whiteout(t, "motd");
            TestImages.File(t, "data/.wh..wh..opq", []);
            TestImages.File(t, "data/new", "n"u8.ToArray());
        }), "diff", Ct);

        Assert.False(File.Exists(dir.Combine("motd")));
        Assert.False(File.Exists(dir.Combine("data/old")));
        Assert.True(File.Exists(dir.Combine("data/new")));
    }

    [Fact]
    public void Random_bytes_never_crash_the_extractor_or_write_outside_it()
    {
        Gen.Byte.Array[0, 4096].Sample(bytes =>
        {
            // The root sits three levels down beside a file it must not touch, so an entry that climbs out with ../ or
            // follows a link upwards lands where the check below sees it. Each sample has its own (samples run in parallel).
            using var dir = new TempDir("crest-prop");
            var outside = dir.Combine("outside");
            File.WriteAllText(outside, "untouched");
            var root = dir.CreateDirectory("a", "b", "c", "root");
            using (var x = new SafeExtractor(root, Unprivileged))
            {
                try
                {
                    x.ExtractAsync(new MemoryStream(bytes), "random", CancellationToken.None).GetAwaiter().GetResult();
                }
                catch (CrestException)
                {
                }
            }

            Directory.Delete(root, recursive: true);
            string[] expected = [dir.Combine("a"), dir.Combine("a", "b"), dir.Combine("a", "b", "c"), outside];
            Assert.Equal(expected.Order(StringComparer.Ordinal), Directory.EnumerateFileSystemEntries(dir.Path, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal));
            Assert.Equal("untouched", File.ReadAllText(outside));
        }, iter: 300);
    }

    [Fact]
    public void Mutated_valid_archives_never_crash_the_extractor()
    {
        var valid = Tar(t =>
        {
            TestImages.Dir(t, "a");
            TestImages.File(t, "a/f", new byte[700]);
            TestImages.Symlink(t, "l", "a/f");
        }).ToArray();
        Gen.Select(Gen.Int[0, valid.Length - 1], Gen.Byte).Array[1, 8].Sample(mutations =>
        {
            var bytes = (byte[])valid.Clone();
            foreach (var (at, value) in mutations)
            {
                bytes[at] = value;
            }

            var root = Directory.CreateTempSubdirectory("crest-prop-").FullName;
            try
            {
                using var x = new SafeExtractor(root, Unprivileged);
                try
                {
                    x.ExtractAsync(new MemoryStream(bytes), "mutated", CancellationToken.None).GetAwaiter().GetResult();
                }
                catch (CrestException)
                {
                }
            }
            finally
            {
                Directory.Delete(root, recursive: true);
            }
        }, iter: 300);
    }
}

public class SafeExtractorRegressionTests
{
    [Fact]
    public async Task A_pax_header_whose_size_field_lies_is_a_clear_error_not_a_crash()
    {
        // Found by the mutation property test (seed 8S2BiRoh7R51): TarReader throws InvalidOperationException here.
        var ms = new MemoryStream();
        using (var w = new TarWriter(ms, TarEntryFormat.Pax, leaveOpen: true))
        {
            TestImages.Dir(w, "a");
            TestImages.File(w, "a/f", new byte[700]);
            TestImages.Symlink(w, "l", "a/f");
        }

        var bytes = ms.ToArray();
        bytes[124] = 50;
        bytes[4617] = 147;
        using var dir = new TempDir();
        using var x = new SafeExtractor(dir.Path, ExtractionPolicy.ImageLayer with { ApplyOwners = false, AllowDevices = false });

        var e = await Assert.ThrowsAsync<CrestException>(() => x.ExtractAsync(new MemoryStream(bytes), "mutated", TestContext.Current.CancellationToken));

        Assert.Contains("malformed or truncated", e.Message, StringComparison.Ordinal);
    }
}
