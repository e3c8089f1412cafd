using System.Buffers.Binary;
using Crest.Core;
using Crest.Criu.Api;
using Google.Protobuf;

namespace Crest.Checkpoint.Format;

/// <summary>What CRIU measured during a dump (its stats-dump file), times in microseconds.</summary>
public sealed record DumpStatistics(uint FreezingTimeUs, uint FrozenTimeUs, uint MemdumpTimeUs, uint MemwriteTimeUs, ulong PagesScanned, ulong PagesWritten);

/// <summary>
/// Reads CRIU's statistics files: two 32-bit magics (0x55105940, then 0x57093306), a 32-bit payload size and a
/// protobuf <c>stats_entry</c>. The file is untrusted (it travels in archives): sizes are checked before anything is allocated.
/// </summary>
public static class CriuStats
{
    public const uint ServiceMagic = 0x55105940;
    public const uint StatsMagic = 0x57093306;
    private const int MaxPayload = 64 * 1024;

    public static DumpStatistics ParseDump(ReadOnlySpan<byte> file, string what)
    {
        if (file.Length < 12)
        {
            throw Malformed(what, $"{file.Length} bytes is shorter than the 12-byte header");
        }

        var magic1 = BinaryPrimitives.ReadUInt32LittleEndian(file);
        var magic2 = BinaryPrimitives.ReadUInt32LittleEndian(file[4..]);
        if (magic1 != ServiceMagic || magic2 != StatsMagic)
        {
            throw Malformed(what, $"magic {magic1:x8}/{magic2:x8} is not CRIU's stats magic {ServiceMagic:x8}/{StatsMagic:x8}");
        }

        var size = BinaryPrimitives.ReadUInt32LittleEndian(file[8..]);
        if (size > MaxPayload || size > file.Length - 12)
        {
            throw Malformed(what, $"the payload claims {size} bytes but {file.Length - 12} follow (at most {MaxPayload})");
        }

        stats_entry entry;
        try
        {
            entry = stats_entry.Parser.ParseFrom(file.Slice(12, (int)size));
        }
        catch (InvalidProtocolBufferException e)
        {
            throw Malformed(what, e.Message);
        }

        var d = entry.Dump ?? throw Malformed(what, "it holds no dump statistics");
        return new DumpStatistics(d.FreezingTime, d.FrozenTime, d.MemdumpTime, d.MemwriteTime, d.PagesScanned, d.PagesWritten);
    }

    private static CrestException Malformed(string what, string why) =>
        new(ErrorKind.InvalidArgument, $"CRIU statistics {what} are malformed: {why}");
}
