using System.Formats.Tar;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.TestKit;

namespace Crest.UnitTests;

/// <summary>
/// A directory's archive measured without reading it, and written inside an outer tar as it streams: what a whole-pod
/// migration's source sends instead of container archives built while the pod is frozen.
/// </summary>
public sealed class NestedArchiveTests : IDisposable
{
    private readonly TempDir _dir = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A checkpoint-like tree: sizes around the 512-byte block, an empty file, a name too long for a ustar header.</summary>
    private string Tree(string name)
    {
        var root = Directory.CreateDirectory(_dir.Combine(name)).FullName;
        var images = Directory.CreateDirectory(Path.Combine(root, "checkpoint")).FullName;
        foreach (var size in new[] { 0, 1, 511, 512, 513, 70_000 })
        {
            File.WriteAllBytes(Path.Combine(images, $"pages-{size}.img"), Enumerable.Range(0, size).Select(i => (byte)i).ToArray());
        }

        File.WriteAllText(Path.Combine(images, new string('n', 140) + ".img"), "long name");
        File.WriteAllText(Path.Combine(root, "config.dump"), "{}");
        File.SetLastWriteTimeUtc(Path.Combine(root, "config.dump"), new DateTime(2026, 12, 4, 19, 0, 0, 123, DateTimeKind.Utc));
        return root;
    }

    private static async Task<byte[]> ArchiveAsync(string dir)
    {
        using var ms = new MemoryStream();
        await CheckpointArchive.WriteAsync(dir, ms, ArchiveCompression.None, Ct);
        return ms.ToArray();
    }

    [Fact]
    public async Task The_measured_length_is_the_written_archives_length()
    {
        var dir = Tree("work");

        Assert.Equal((await ArchiveAsync(dir)).LongLength, await CheckpointArchive.MeasureAsync(dir, Ct));
    }

    [Fact]
    public async Task A_nested_archive_is_written_into_the_outer_tar_as_the_directorys_own_archive_byte_for_byte()
    {
        var outer = Directory.CreateDirectory(_dir.Combine("pod")).FullName;
        File.WriteAllText(Path.Combine(outer, "pod.json"), "{}");
        Directory.CreateDirectory(Path.Combine(outer, "containers"));
        var a = Tree("a");
        var b = Tree("b");
        File.WriteAllText(Path.Combine(b, "extra"), "only in b");

        using var sent = new MemoryStream();
        await CheckpointArchive.WriteAsync(outer, sent, ArchiveCompression.None, Ct,
            [new NestedArchive("containers/a.tar", a, await CheckpointArchive.MeasureAsync(a, Ct)), new NestedArchive("containers/b.tar", b, await CheckpointArchive.MeasureAsync(b, Ct))]);

        sent.Position = 0;
        var entries = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        using (var tar = new TarReader(sent))
        {
            while (await tar.GetNextEntryAsync(copyData: true, Ct) is { } entry)
            {
                using var data = new MemoryStream();
                entry.DataStream?.CopyTo(data);
                entries[entry.Name.TrimEnd('/')] = data.ToArray();
            }
        }

        Assert.Equal(["containers", "containers/a.tar", "containers/b.tar", "pod.json"], entries.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(await ArchiveAsync(a), entries["containers/a.tar"]);
        Assert.Equal(await ArchiveAsync(b), entries["containers/b.tar"]);
    }

    [Fact]
    public async Task A_directory_that_changed_after_it_was_measured_breaks_the_stream_off_instead_of_misframing_it()
    {
        var outer = Directory.CreateDirectory(_dir.Combine("pod")).FullName;
        var a = Tree("a");
        var measured = await CheckpointArchive.MeasureAsync(a, Ct);
        File.WriteAllBytes(Path.Combine(a, "config.dump"), new byte[4096]);

        var e = await Assert.ThrowsAsync<CrestException>(() =>
            CheckpointArchive.WriteAsync(outer, Stream.Null, ArchiveCompression.None, Ct, [new NestedArchive("containers/a.tar", a, measured)]));

        Assert.Contains("measured", e.Message, StringComparison.Ordinal);
    }

    public void Dispose() => _dir.Dispose();
}
