using System.Formats.Tar;
using System.IO.Compression;
using Crest.Core;
using Crest.Linux;

namespace Crest.Checkpoint.Format;

/// <summary>How the outer archive is compressed. Nobody compresses it on the CRI path; readers detect it.</summary>
public enum ArchiveCompression
{
    None,
    Gzip,
    Zstd,
}

/// <summary>Writes a checkpoint directory as the outer archive, and opens archives of any compression for reading.</summary>
public static partial class CheckpointArchive
{
    public static ArchiveCompression ParseCompression(string text) => text.ToUpperInvariant() switch
    {
        "" or "NONE" => ArchiveCompression.None,
        "GZIP" or "GZ" => ArchiveCompression.Gzip,
        "ZSTD" or "ZSTANDARD" => ArchiveCompression.Zstd,
        _ => throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint compression \"{text}\" is not one of none, gzip, zstd"),
    };

    /// <summary>
    /// Writes every file under <paramref name="directory"/> (names relative to it, directories first) as a POSIX
    /// tar to <paramref name="output"/>, compressed as asked. Files are read with O_NOFOLLOW; links are refused.
    /// Each of <paramref name="nested"/> follows as one more file, the archive of its directory made as it is written.
    /// </summary>
    public static async Task WriteAsync(string directory, Stream output, ArchiveCompression compression, CancellationToken ct, IReadOnlyList<NestedArchive>? nested = null)
    {
        Stream? compressed = compression switch
        {
            ArchiveCompression.Gzip => new GZipStream(output, CompressionLevel.Fastest, leaveOpen: true),
            ArchiveCompression.Zstd => new ZstdSharp.CompressionStream(output, 3, leaveOpen: true),
            _ => null,
        };
        var target = compressed ?? output;
        try
        {
            await using var tar = new TarWriter(target, TarEntryFormat.Pax, leaveOpen: true);
            await WriteTreeAsync(tar, directory, lengthsOnly: false, ct).ConfigureAwait(false);
            foreach (var n in nested ?? [])
            {
                await tar.WriteEntryAsync(new PaxTarEntry(TarEntryType.RegularFile, n.EntryName) { Mode = (UnixFileMode)0x180, DataStream = new NestedArchiveData(n) }, ct).ConfigureAwait(false);
            }
        }
        finally
        {
            if (compressed is not null)
            {
                await compressed.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// The entries of <paramref name="directory"/>'s tree, breadth first in ordinal order; with <paramref name="lengthsOnly"/>
    /// each file's data is its length alone (<see cref="MeasureAsync"/>), so the headers are the same and no file is read.
    /// </summary>
    private static async Task WriteTreeAsync(TarWriter tar, string directory, bool lengthsOnly, CancellationToken ct)
    {
        var pending = new Queue<string>();
        pending.Enqueue("");
        while (pending.Count > 0)
        {
            var relative = pending.Dequeue();
            var dir = relative.Length == 0 ? directory : Path.Combine(directory, relative);
            foreach (var full in Directory.EnumerateFileSystemEntries(dir).Order(StringComparer.Ordinal))
            {
                ct.ThrowIfCancellationRequested();
                var name = relative.Length == 0 ? Path.GetFileName(full) : relative + "/" + Path.GetFileName(full);
                if (FileKinds.IsDirectory(full))
                {
                    // Its own time, not the writer's clock: the same tree always makes the same headers (MeasureAsync counts on it).
                    await tar.WriteEntryAsync(new PaxTarEntry(TarEntryType.Directory, name) { Mode = (UnixFileMode)0x1C0, ModificationTime = File.GetLastWriteTimeUtc(full) }, ct).ConfigureAwait(false);
                    pending.Enqueue(name);
                }
                else if (FileKinds.IsRegularFile(full))
                {
                    await using Stream data = lengthsOnly ? new LengthOnly(new FileInfo(full).Length) : new FileStream(FileKinds.OpenReadNoFollow(full), FileAccess.Read, 1 << 20);
                    var entry = new PaxTarEntry(TarEntryType.RegularFile, name) { Mode = (UnixFileMode)0x180, DataStream = data, ModificationTime = File.GetLastWriteTimeUtc(full) };
                    await tar.WriteEntryAsync(entry, ct).ConfigureAwait(false);
                }
                else
                {
                    throw new CrestException(ErrorKind.Internal, $"checkpoint file {full} is neither a regular file nor a directory");
                }
            }
        }
    }

    /// <summary>Opens an archive for reading, undoing gzip or zstd when its first bytes say so.</summary>
    public static Stream OpenRead(Stream file) => Crest.Images.LayerStreams.Decompress(file);
}

/// <summary>The small files of an archive a tool needs without unpacking it (checkpoint images, --stats, inspect).</summary>
/// <summary>What a container checkpoint archive says about System V shared memory, read without unpacking it.</summary>
public static class ArchiveSysVShm
{
    /// <summary>
    /// The ids of the System V segments the checkpointed processes had attached: the archive's checkpoint/mm-*.img
    /// files (each at most <paramref name="maxImageBytes"/>) read straight from the tar, nothing written to disk.
    /// </summary>
    public static async Task<IReadOnlySet<ulong>> AttachedAsync(string archivePath, int maxImageBytes, CancellationToken ct)
    {
        var images = new List<(string, ReadOnlyMemory<byte>)>();
        await using var file = new FileStream(FileKinds.OpenReadNoFollow(archivePath), FileAccess.Read, 1 << 16);
        await using var stream = CheckpointArchive.OpenRead(file);
        using var tar = new TarReader(stream);
        while (await tar.GetNextEntryAsync(copyData: false, ct).ConfigureAwait(false) is { } entry)
        {
            var name = entry.Name.TrimStart('.', '/');
            if (entry.EntryType is not (TarEntryType.RegularFile or TarEntryType.V7RegularFile) || !name.StartsWith(CheckpointFiles.CriuImages + "/mm-", StringComparison.Ordinal)
                || !name.EndsWith(".img", StringComparison.Ordinal) || name.IndexOf('/', CheckpointFiles.CriuImages.Length + 1) >= 0)
            {
                continue;
            }

            if (entry.Length > maxImageBytes || entry.DataStream is null)
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint archive {archivePath}: {name} is {entry.Length} bytes, more than the {maxImageBytes} an mm image may have");
            }

            var bytes = new byte[entry.Length];
            await entry.DataStream.ReadExactlyAsync(bytes, ct).ConfigureAwait(false);
            images.Add((name, bytes));
        }

        return CriuImages.SysVAttachments(images);
    }
}

public sealed record ArchiveMetadata(ConfigDump Config, IReadOnlyDictionary<string, string> SpecAnnotations, DumpStatistics? Statistics, long Entries, long Bytes, IReadOnlyDictionary<string, long> Sizes);

public static class ArchiveMetadataReader
{
    private const int MaxMetadataBytes = 4 << 20;

    /// <summary>Reads config.dump, spec.dump's annotations and stats-dump from an archive of any compression, by streaming it once.</summary>
    public static async Task<ArchiveMetadata> ReadAsync(string archivePath, CancellationToken ct)
    {
        await using var file = new FileStream(FileKinds.OpenReadNoFollow(archivePath), FileAccess.Read, 1 << 20);
        await using var stream = CheckpointArchive.OpenRead(file);
        using var reader = new TarReader(stream);
        ConfigDump? config = null;
        Dictionary<string, string>? annotations = null;
        DumpStatistics? stats = null;
        long entries = 0;
        long bytes = 0;
        var sizes = new Dictionary<string, long>(StringComparer.Ordinal);
        try
        {
            while (await reader.GetNextEntryAsync(copyData: false, ct).ConfigureAwait(false) is { } entry)
            {
                entries++;
                bytes += entry.Length;
                var name = entry.Name.StartsWith("./", StringComparison.Ordinal) ? entry.Name[2..] : entry.Name;
                var top = name.Split('/')[0];
                sizes[top] = sizes.GetValueOrDefault(top) + entry.Length;
                if (entry.EntryType is not (TarEntryType.RegularFile or TarEntryType.V7RegularFile) || entry.DataStream is null)
                {
                    continue;
                }

                if (name is CheckpointFiles.ConfigDump or CheckpointFiles.SpecDump or CheckpointFiles.StatsDump)
                {
                    if (entry.Length > MaxMetadataBytes)
                    {
                        throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint archive {archivePath}: {name} is larger than {MaxMetadataBytes} bytes");
                    }

                    using var buffer = new MemoryStream();
                    await entry.DataStream.CopyToAsync(buffer, ct).ConfigureAwait(false);
                    var data = buffer.ToArray();
                    switch (name)
                    {
                        case CheckpointFiles.ConfigDump:
                            config = System.Text.Json.JsonSerializer.Deserialize(data, CheckpointJson.Default.ConfigDump);
                            break;
                        case CheckpointFiles.SpecDump:
                            annotations = SpecAnnotations(data);
                            break;
                        default:
                            stats = CriuStats.ParseDump(data, $"{archivePath}:{name}");
                            break;
                    }
                }
            }
        }
        catch (Exception e) when (e is InvalidDataException or FormatException or System.Text.Json.JsonException or EndOfStreamException or InvalidOperationException)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint archive {archivePath} is malformed: {e.Message}", e);
        }

        return new ArchiveMetadata(
            config ?? throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint archive {archivePath} has no config.dump; it is not a container checkpoint"),
            annotations ?? throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint archive {archivePath} has no spec.dump; it is not a container checkpoint"),
            stats, entries, bytes, sizes);
    }

    /// <summary>The string annotations of a spec.dump (the OCI runtime spec the container ran with).</summary>
    public static Dictionary<string, string> SpecAnnotations(byte[] specDump) =>
        (System.Text.Json.Nodes.JsonNode.Parse(specDump)?["annotations"] as System.Text.Json.Nodes.JsonObject ?? [])
            .Where(kv => kv.Value is System.Text.Json.Nodes.JsonValue)
            .ToDictionary(kv => kv.Key, kv => kv.Value!.ToString(), StringComparer.Ordinal);
}

/// <summary>The annotations of a checkpoint OCI image: all three families, so containerd, CRI-O and Podman each detect it.</summary>
public static class CheckpointImageAnnotations
{
    /// <summary>The annotation keys that mark an image as a checkpoint (checkpointctl/containerd, CRI-O, Podman).</summary>
    public static readonly IReadOnlyList<string> Markers =
    [
        "org.criu.checkpoint.container.name",
        "io.kubernetes.cri-o.annotations.checkpoint.name",
        "io.podman.annotations.checkpoint.name",
    ];

    public static Dictionary<string, string> For(ArchiveMetadata archive)
    {
        ArgumentNullException.ThrowIfNull(archive);
        return For(archive.Config, archive.SpecAnnotations);
    }

    /// <summary>The annotations of a checkpoint image from its config.dump and spec.dump's annotations.</summary>
    public static Dictionary<string, string> For(ConfigDump c, IReadOnlyDictionary<string, string> a)
    {
        ArgumentNullException.ThrowIfNull(c);
        ArgumentNullException.ThrowIfNull(a);
        var engine = a.GetValueOrDefault(CheckpointFiles.ContainerManagerAnnotation) switch
        {
            "libpod" => "Podman",
            "cri-o" => "CRI-O",
            CheckpointFiles.CrestManager => "Crest",
            _ => "containerd",
        };
        var name = a.GetValueOrDefault("io.kubernetes.cri.container-name") ?? c.Name;
        var result = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["org.criu.checkpoint.engine.name"] = engine,
            ["org.criu.checkpoint.container.name"] = name,
            ["org.criu.checkpoint.pod.name"] = a.GetValueOrDefault("io.kubernetes.pod.name") ?? a.GetValueOrDefault("io.kubernetes.cri.sandbox-name") ?? "",
            ["org.criu.checkpoint.pod.namespace"] = a.GetValueOrDefault("io.kubernetes.pod.namespace") ?? a.GetValueOrDefault("io.kubernetes.cri.sandbox-namespace") ?? "",
            ["org.criu.checkpoint.rootfsImageUserRequested"] = c.RootfsImage ?? "",
            ["org.criu.checkpoint.rootfsImageName"] = c.RootfsImageName ?? "",
            ["org.criu.checkpoint.rootfsImageID"] = c.RootfsImageRef ?? "",
            ["org.criu.checkpoint.runtime.name"] = c.Runtime ?? "",
            ["io.kubernetes.cri-o.annotations.checkpoint.name"] = name,
            ["io.kubernetes.cri-o.annotations.checkpoint.rawImageName"] = c.RootfsImage ?? "",
            ["io.kubernetes.cri-o.annotations.checkpoint.rootfsImageID"] = c.RootfsImageRef ?? "",
            ["io.kubernetes.cri-o.annotations.checkpoint.rootfsImageName"] = c.RootfsImageName ?? "",
            ["io.podman.annotations.checkpoint.name"] = name,
            ["io.podman.annotations.checkpoint.rawImageName"] = c.RootfsImage ?? "",
            ["io.podman.annotations.checkpoint.rootfsImageID"] = c.RootfsImageRef ?? "",
            ["io.podman.annotations.checkpoint.rootfsImageName"] = c.RootfsImageName ?? "",
            ["io.podman.annotations.checkpoint.runtime.name"] = c.Runtime ?? "",
        };
        return result;
    }
}
