using System.Security.Cryptography;
using Crest.Core;

namespace Crest.UnitTests;

/// <summary>The SHA-256 trailer check of a migration archive's hops.</summary>
public sealed class StreamDigestTests
{
    [Fact]
    public void Bytes_appended_in_pieces_verify_against_the_digest_of_the_whole()
    {
        var data = new byte[70_000];
        new Random(3).NextBytes(data);
        using var digest = new StreamDigest();

        digest.Append(data.AsSpan(0, 65_536));
        digest.Append(data.AsSpan(65_536));

        Assert.Equal(70_000, digest.Bytes);
        digest.Verify(SHA256.HashData(data), "the archive");
    }

    [Fact]
    public void A_changed_byte_is_data_loss_naming_both_digests_and_a_digest_of_another_length_is_refused()
    {
        var data = new byte[1000];
        var sent = SHA256.HashData(data);
        data[10] = 1;
        using var digest = new StreamDigest();
        digest.Append(data);

        var e = Assert.Throws<CrestException>(() => digest.Verify(sent, "migration archive t1"));

        Assert.Equal(ErrorKind.DataLoss, e.Kind);
        Assert.StartsWith("migration archive t1: the 1000 bytes that arrived have SHA-256 " + Convert.ToHexStringLower(SHA256.HashData(data)), e.Message, StringComparison.Ordinal);
        Assert.Contains("their sender computed " + Convert.ToHexStringLower(sent), e.Message, StringComparison.Ordinal);
        using var other = new StreamDigest();
        Assert.Equal(ErrorKind.InvalidArgument, Assert.Throws<CrestException>(() => other.Verify(new byte[20], "x")).Kind);
    }
}
