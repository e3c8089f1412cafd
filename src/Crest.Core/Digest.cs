using System.Security.Cryptography;

namespace Crest.Core;

/// <summary>A content digest, <c>sha256:&lt;64 lowercase hex&gt;</c>. Crest stores and verifies sha256 only.</summary>
public readonly record struct Digest
{
    private Digest(string hex) => Hex = hex;

    public const string Algorithm = "sha256";

    public string Hex { get; }

    public override string ToString() => $"{Algorithm}:{Hex}";

    public static Digest Parse(string text)
    {
        if (!TryParse(text, out var digest))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"\"{text}\" is not a sha256 digest (expected sha256: followed by 64 lowercase hex digits)");
        }

        return digest;
    }

    public static bool TryParse(string? text, out Digest digest)
    {
        digest = default;
        if (text is null || !text.StartsWith("sha256:", StringComparison.Ordinal) || text.Length != 7 + 64)
        {
            return false;
        }

        var hex = text[7..];
        if (!IsLowerHex(hex))
        {
            return false;
        }

        digest = new Digest(hex);
        return true;
    }

    /// <summary>A 64-hex string with no algorithm (CRI-O's image IDs, or a short form the user typed).</summary>
    public static bool TryParseHex(string? hex, out Digest digest)
    {
        digest = default;
        if (hex is null || hex.Length != 64 || !IsLowerHex(hex))
        {
            return false;
        }

        digest = new Digest(hex);
        return true;
    }

    public static Digest FromHash(ReadOnlySpan<byte> sha256) => new(Convert.ToHexStringLower(sha256));

    public static Digest Of(ReadOnlySpan<byte> content) => FromHash(SHA256.HashData(content));

    private static bool IsLowerHex(string hex)
    {
        foreach (var c in hex)
        {
            if (c is not ((>= '0' and <= '9') or (>= 'a' and <= 'f')))
            {
                return false;
            }
        }

        return true;
    }
}
