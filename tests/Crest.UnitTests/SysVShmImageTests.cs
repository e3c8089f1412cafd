using System.Buffers.Binary;
using Crest.Core;
using Crest.Linux;

namespace Crest.UnitTests;

/// <summary>The shared memory image of a pod checkpoint: written and read back without the kernel, and refused when damaged or oversized.</summary>
public sealed class SysVShmImageTests
{
    private static readonly SysVShmSegment Named = new(Id: 32769, Key: 0x1234, Size: 10, Mode: 0x1A4 /* 0644 */, Uid: 1000, Gid: 2000);
    private static readonly SysVShmSegment Private = new(Id: 5, Key: 0, Size: 3, Mode: 0x180 | 0x200 /* 0600, SHM_DEST */, Uid: 0, Gid: 0);

    private static byte[] Image(params (SysVShmSegment Segment, byte[] Bytes)[] segments)
    {
        using var output = new MemoryStream();
        SysVShmImage.WriteHeader(output, [.. segments.Select(s => s.Segment)]);
        foreach (var (_, bytes) in segments)
        {
            output.Write(bytes);
        }

        return output.ToArray();
    }

    private static byte[] TwoSegments() => Image((Named, "0123456789"u8.ToArray()), (Private, [7, 8, 9]));

    private static CrestException Refused(byte[] image, long maxTotalBytes = 1 << 20)
    {
        var e = Assert.Throws<CrestException>(() =>
        {
            using var input = new MemoryStream(image);
            foreach (var s in SysVShmImage.ReadHeader(input, maxTotalBytes))
            {
                SysVShmImage.CopyContents(input, s, Stream.Null, CancellationToken.None);
            }

            SysVShmImage.ExpectEnd(input);
        });
        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        return e;
    }

    [Fact]
    public void Segments_and_their_bytes_read_back_as_written()
    {
        using var input = new MemoryStream(TwoSegments());

        var segments = SysVShmImage.ReadHeader(input, maxTotalBytes: 13);
        var contents = segments.Select(s =>
        {
            using var bytes = new MemoryStream();
            SysVShmImage.CopyContents(input, s, bytes, CancellationToken.None);
            return bytes.ToArray();
        }).ToList();
        SysVShmImage.ExpectEnd(input);

        Assert.Equal([Named, Private], segments);
        Assert.Equal("0123456789"u8.ToArray(), contents[0]);
        Assert.Equal([7, 8, 9], contents[1]);
        Assert.False(segments[0].MarkedForDestruction);
        Assert.True(segments[1].MarkedForDestruction);
    }

    [Fact]
    public void The_format_is_little_endian_with_a_magic_a_version_and_a_table_first()
    {
        var image = TwoSegments();

        Assert.Equal("CRESTSHM"u8.ToArray(), image[..8]);
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(image.AsSpan(8)));
        Assert.Equal(2u, BinaryPrimitives.ReadUInt32LittleEndian(image.AsSpan(12)));
        Assert.Equal(32769, BinaryPrimitives.ReadInt32LittleEndian(image.AsSpan(16)));
        Assert.Equal(10ul, BinaryPrimitives.ReadUInt64LittleEndian(image.AsSpan(16 + 24)));
        Assert.Equal(16 + 2 * 32 + 13, image.Length);
    }

    [Fact]
    public void An_empty_namespace_is_a_header_and_nothing_else()
    {
        using var input = new MemoryStream(Image());

        Assert.Empty(SysVShmImage.ReadHeader(input, 1));
        SysVShmImage.ExpectEnd(input);
    }

    [Theory]
    [InlineData(0, "header")]
    [InlineData(12, "header")]
    [InlineData(16 + 31, "table entry of segment 1 of 2")]
    [InlineData(16 + 32 + 31, "table entry of segment 2 of 2")]
    [InlineData(16 + 64 + 4, "ends after 4 of the 10 bytes of segment 32769")]
    [InlineData(16 + 64 + 12, "ends after 2 of the 3 bytes of segment 5")]
    public void A_truncated_image_says_what_it_expected(int length, string expected)
    {
        var e = Refused(TwoSegments()[..length]);

        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Bytes_after_the_last_segment_are_refused()
    {
        var e = Refused([.. TwoSegments(), 0]);

        Assert.Contains("after the last segment", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_bad_magic_is_refused()
    {
        var image = TwoSegments();
        image[0] = (byte)'X';

        Assert.Contains("magic", Refused(image).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Another_version_is_refused()
    {
        var image = TwoSegments();
        BinaryPrimitives.WriteUInt32LittleEndian(image.AsSpan(8), 2);

        Assert.Contains("version 2", Refused(image).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_segment_larger_than_the_limit_is_refused_before_its_bytes_are_read()
    {
        var image = TwoSegments();
        BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan(16 + 24), ulong.MaxValue);

        var e = Refused(image);

        Assert.Contains("segment 32769", e.Message, StringComparison.Ordinal);
        Assert.Contains($"{ulong.MaxValue} bytes", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Segments_over_the_total_limit_together_are_refused()
    {
        var e = Refused(TwoSegments(), maxTotalBytes: 12);

        Assert.Contains("more than 12 bytes", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_segment_count_no_namespace_can_hold_is_refused()
    {
        var image = TwoSegments();
        BinaryPrimitives.WriteUInt32LittleEndian(image.AsSpan(12), uint.MaxValue);

        Assert.Contains("declares 4294967295 segments", Refused(image).Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(-1, 0, 0x1A4, "id -1")]
    [InlineData(5, 0, 0x1A4, "segment id 5 twice")]
    [InlineData(6, 0x1234, 0x1A4, "key 0x00001234 twice")]
    [InlineData(6, 0, 0x1000, "mode 0x1000")]
    public void A_second_segment_that_cannot_be_recreated_is_refused(int id, int key, uint mode, string expected)
    {
        var second = new SysVShmSegment(id, key, 3, mode, 0, 0);
        var image = Image((Named with { Id = 5 }, "0123456789"u8.ToArray()), (second, [1, 2, 3]));

        Assert.Contains(expected, Refused(image).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_segment_of_no_bytes_is_refused()
    {
        var image = Image((Named with { Size = 0 }, []));

        Assert.Contains("size of 0 bytes", Refused(image).Message, StringComparison.Ordinal);
    }
}
