using System.Security.Cryptography;

namespace Crest.Core;

/// <summary>
/// The SHA-256 of bytes that travel in pieces, checked against the digest their sender computed. A migration archive
/// ends with such a digest: the source computes it over what it made, the client checks what it read against it and
/// forwards it to the target, which checks what it received; bytes changed anywhere on the way, the relaying client
/// included, stop the migration, and the first hop that saw them says so.
/// </summary>
public sealed class StreamDigest : IDisposable
{
    /// <summary>The length of a SHA-256 digest.</summary>
    public const int Length = 32;

    private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

    /// <summary>The bytes appended so far.</summary>
    public long Bytes { get; private set; }

    public void Append(ReadOnlySpan<byte> data)
    {
        _hash.AppendData(data);
        Bytes += data.Length;
    }

    /// <summary>The digest of everything appended; the hash starts over.</summary>
    public byte[] Finish() => _hash.GetHashAndReset();

    /// <summary>
    /// Checks the bytes appended against <paramref name="expected"/>, the sender's digest: InvalidArgument when it is not
    /// a SHA-256, DataLoss naming both digests when they differ. <paramref name="what"/> names the stream and its hop.
    /// </summary>
    public void Verify(ReadOnlySpan<byte> expected, string what)
    {
        var actual = Finish();
        if (expected.Length != Length)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"{what} ended with a digest of {expected.Length} bytes; a SHA-256 has {Length}");
        }

        if (!CryptographicOperations.FixedTimeEquals(actual, expected))
        {
            throw new CrestException(ErrorKind.DataLoss,
                $"{what}: the {Bytes} bytes that arrived have SHA-256 {Convert.ToHexStringLower(actual)}, but their sender computed {Convert.ToHexStringLower(expected)}; "
                + "they changed on the way, and nothing made from them is kept: run the migration again, and check the nodes' memory and disks if it recurs");
        }
    }

    public void Dispose() => _hash.Dispose();
}
