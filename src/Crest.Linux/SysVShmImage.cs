using System.Buffers.Binary;
using Crest.Core;

namespace Crest.Linux;

/// <summary>One System V shared memory segment as an IPC namespace held it: what must be the same after restore.</summary>
/// <param name="Mode">The kernel's mode word: permission bits (0777), plus SHM_DEST (0x200) and SHM_LOCKED (0x400) as they were.</param>
public sealed record SysVShmSegment(int Id, int Key, long Size, uint Mode, uint Uid, uint Gid)
{
    /// <summary>Marked for removal (IPC_RMID) while still attached; its key is already IPC_PRIVATE.</summary>
    public bool MarkedForDestruction => (Mode & SysVShmImage.ModeDestroy) != 0;
}

/// <summary>
/// Crest's image of an IPC namespace's shared memory, little-endian:
/// <code>
/// "CRESTSHM" (8 bytes)  version u32 (1)  count u32
/// count x { id i32  key i32  mode u32  uid u32  gid u32  reserved u32 (0)  size u64 }   (32 bytes each)
/// the contents of each segment in table order, exactly size bytes each; nothing after the last
/// </code>
/// The whole table comes first so a reader checks every id and size before it creates anything. The reader treats its
/// input as untrusted (it comes out of a checkpoint archive): every count and size is bounded and a short read names what was expected.
/// </summary>
public static class SysVShmImage
{
    public const uint Version = 1;

    /// <summary>More segments than an IPC namespace can hold (IPCMNI with ipcmni_extend is 2^24).</summary>
    public const int MaxSegments = 1 << 24;

    internal const uint ModePermissions = 0x1FF;
    internal const uint ModeDestroy = 0x200;
    internal const uint ModeLocked = 0x400;

    private const int HeaderSize = 16;
    private const int EntrySize = 32;

    public static ReadOnlySpan<byte> Magic => "CRESTSHM"u8;

    /// <summary>Writes the magic, the version and the segment table; the caller then writes each segment's bytes in table order.</summary>
    public static void WriteHeader(Stream output, IReadOnlyList<SysVShmSegment> segments)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(segments);
        Span<byte> header = stackalloc byte[HeaderSize];
        Magic.CopyTo(header);
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], Version);
        BinaryPrimitives.WriteUInt32LittleEndian(header[12..], (uint)segments.Count);
        output.Write(header);

        Span<byte> entry = stackalloc byte[EntrySize];
        foreach (var s in segments)
        {
            BinaryPrimitives.WriteInt32LittleEndian(entry, s.Id);
            BinaryPrimitives.WriteInt32LittleEndian(entry[4..], s.Key);
            BinaryPrimitives.WriteUInt32LittleEndian(entry[8..], s.Mode);
            BinaryPrimitives.WriteUInt32LittleEndian(entry[12..], s.Uid);
            BinaryPrimitives.WriteUInt32LittleEndian(entry[16..], s.Gid);
            BinaryPrimitives.WriteUInt32LittleEndian(entry[20..], 0);
            BinaryPrimitives.WriteUInt64LittleEndian(entry[24..], (ulong)s.Size);
            output.Write(entry);
        }
    }

    /// <summary>
    /// Reads and checks the magic, the version and the segment table: ids not negative and not repeated, keys (other
    /// than IPC_PRIVATE) not repeated, only known mode bits, every size at least 1 byte and the sum of them at most
    /// <paramref name="maxTotalBytes"/>.
    /// </summary>
    public static IReadOnlyList<SysVShmSegment> ReadHeader(Stream input, long maxTotalBytes)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxTotalBytes);
        Span<byte> header = stackalloc byte[HeaderSize];
        ReadExactly(input, header, "the 16-byte header (magic CRESTSHM, version, segment count)");
        if (!header[..8].SequenceEqual(Magic))
        {
            throw Invalid($"does not start with the magic CRESTSHM (found {Convert.ToHexString(header[..8])}); it is not a Crest shared memory image");
        }

        var version = BinaryPrimitives.ReadUInt32LittleEndian(header[8..]);
        if (version != Version)
        {
            throw Invalid($"has format version {version}; this Crest reads version {Version} only");
        }

        var count = BinaryPrimitives.ReadUInt32LittleEndian(header[12..]);
        if (count > MaxSegments)
        {
            throw Invalid($"declares {count} segments, more than an IPC namespace can hold ({MaxSegments})");
        }

        var segments = new List<SysVShmSegment>();
        var ids = new HashSet<int>();
        var keys = new HashSet<int>();
        long total = 0;
        Span<byte> entry = stackalloc byte[EntrySize];
        for (var i = 0; i < count; i++)
        {
            ReadExactly(input, entry, $"the 32-byte table entry of segment {i + 1} of {count}");
            var id = BinaryPrimitives.ReadInt32LittleEndian(entry);
            var key = BinaryPrimitives.ReadInt32LittleEndian(entry[4..]);
            var mode = BinaryPrimitives.ReadUInt32LittleEndian(entry[8..]);
            var uid = BinaryPrimitives.ReadUInt32LittleEndian(entry[12..]);
            var gid = BinaryPrimitives.ReadUInt32LittleEndian(entry[16..]);
            var size = BinaryPrimitives.ReadUInt64LittleEndian(entry[24..]);
            if (id < 0)
            {
                throw Invalid($"has segment {i + 1} with id {id}; a segment id is never negative");
            }

            if (!ids.Add(id))
            {
                throw Invalid($"lists segment id {id} twice");
            }

            if (key != 0 && !keys.Add(key))
            {
                throw Invalid($"lists key 0x{key:x8} twice (segments {id} and another)");
            }

            if ((mode & ~(ModePermissions | ModeDestroy | ModeLocked)) != 0)
            {
                throw Invalid($"gives segment {id} mode 0x{mode:x}, which has bits other than the permissions, SHM_DEST and SHM_LOCKED");
            }

            if (uid == uint.MaxValue || gid == uint.MaxValue)
            {
                throw Invalid($"gives segment {id} owner {uid}:{gid}; -1 is not a user or group");
            }

            if (size == 0 || size > (ulong)maxTotalBytes)
            {
                throw Invalid($"gives segment {id} a size of {size} bytes; a segment must hold 1 to {maxTotalBytes} bytes (the restore limit)");
            }

            total += (long)size;
            if (total > maxTotalBytes)
            {
                throw Invalid($"holds more than {maxTotalBytes} bytes of shared memory (the restore limit) by segment {id}; raise the limit or checkpoint a pod that uses less");
            }

            segments.Add(new SysVShmSegment(id, key, (long)size, mode, uid, gid));
        }

        return segments;
    }

    /// <summary>Copies exactly <paramref name="segment"/>'s size from the image to <paramref name="destination"/>; fewer bytes is a truncated image.</summary>
    public static void CopyContents(Stream input, SysVShmSegment segment, Stream destination, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(segment);
        ArgumentNullException.ThrowIfNull(destination);
        var buffer = new byte[(int)Math.Min(segment.Size, 1 << 20)];
        long done = 0;
        while (done < segment.Size)
        {
            ct.ThrowIfCancellationRequested();
            var n = input.Read(buffer, 0, (int)Math.Min(buffer.Length, segment.Size - done));
            if (n == 0)
            {
                throw Invalid($"ends after {done} of the {segment.Size} bytes of segment {segment.Id}");
            }

            destination.Write(buffer, 0, n);
            done += n;
        }
    }

    /// <summary>Refuses anything after the last segment's bytes: an image that says less than it holds is not trusted.</summary>
    public static void ExpectEnd(Stream input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (input.ReadByte() >= 0)
        {
            throw Invalid("has bytes after the last segment's contents; it is damaged or not what its table says");
        }
    }

    private static void ReadExactly(Stream input, Span<byte> into, string what)
    {
        var done = 0;
        while (done < into.Length)
        {
            var n = input.Read(into[done..]);
            if (n == 0)
            {
                throw Invalid($"is truncated: expected {what}, found {done} of {into.Length} bytes");
            }

            done += n;
        }
    }

    private static CrestException Invalid(string what) =>
        new(ErrorKind.InvalidArgument, $"shared memory image {what}");
}
