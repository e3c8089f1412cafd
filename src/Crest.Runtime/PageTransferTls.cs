using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Crest.Core;
using Crest.Linux;

namespace Crest.Runtime;

/// <summary>
/// One end of a post-copy page transfer over CRIU's TLS: this node's certificate and private key, and the peer's
/// certificate, which CRIU takes as its only trusted CA (<c>--tls-cacert</c>). Each certificate is self-signed and made for
/// one migration, so trusting exactly the peer's pins it: only the holder of its private key completes the handshake.
/// CRIU's page server asks the client for a certificate (mutual authentication), and both ends verify the other's.
/// </summary>
public sealed record PageTransferTls(string CertificateFile, string KeyFile, string PeerCertificateFile)
{
    /// <summary>
    /// The CRIU configuration lines of the source's dump (runc has no flag for them). The name check is off because the
    /// peer certificate is pinned: CRIU would compare the peer's name with the page server's address, which adds nothing
    /// to an exact certificate that no other party can present.
    /// </summary>
    public IReadOnlyList<string> ConfigLines() =>
        ["tls", $"tls-cacert {PeerCertificateFile}", $"tls-cert {CertificateFile}", $"tls-key {KeyFile}", "tls-no-cn-verify"];

    /// <summary>The same options as flags, for the target's <c>criu lazy-pages</c>.</summary>
    public IReadOnlyList<string> Flags() =>
        ["--tls", "--tls-cacert", PeerCertificateFile, "--tls-cert", CertificateFile, "--tls-key", KeyFile, "--tls-no-cn-verify"];
}

/// <summary>A node's fresh key pair for one post-copy page transfer: its token, and its certificate (PEM) for the peer.</summary>
public sealed record PageTransferIdentity(string Token, string Certificate);

/// <summary>
/// The key pairs of this node's post-copy page transfers, one per migration, each in a 0700 directory of its own under
/// <c>&lt;root&gt;/page-tls/</c> (the key 0600): made with <see cref="Create"/>, given the peer's certificate by
/// <see cref="Pin"/>, removed when the transfer ends (<see cref="Remove"/>) and swept at crestd's start. The private key
/// never leaves the node; only the certificates travel, through the <c>crest migrate</c> client.
/// </summary>
public sealed class PageTransferIdentities(string root, ICommandRunner commands, string criuPath)
{
    private const string CertificateName = "cert.pem";
    private const string KeyName = "key.pem";
    private const string PeerName = "peer.pem";
    private const UnixFileMode Private = UnixFileMode.UserRead | UnixFileMode.UserWrite;
    private const UnixFileMode PrivateDirectory = Private | UnixFileMode.UserExecute;

    /// <summary>How long a certificate is valid either side of its making: node clocks differ, and a transfer is short.</summary>
    private static readonly TimeSpan ClockSlack = TimeSpan.FromHours(1);
    private static readonly TimeSpan Lifetime = TimeSpan.FromDays(1);

    private readonly ConcurrentDictionary<string, bool> _criuTls = new(StringComparer.Ordinal);

    /// <summary>Where the identities live.</summary>
    public string Root => root;

    /// <summary>Makes a fresh ECDSA P-256 key pair and a self-signed certificate for one page transfer.</summary>
    public PageTransferIdentity Create(TimeProvider time)
    {
        ArgumentNullException.ThrowIfNull(time);
        var token = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(12));
        Directory.CreateDirectory(root, PrivateDirectory);
        var dir = Directory.CreateDirectory(DirectoryOf(token), PrivateDirectory).FullName;
        try
        {
            using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var request = new CertificateRequest($"CN=crest post-copy page transfer {token}", key, HashAlgorithmName.SHA256);
            request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
            request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(
                [new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], false));
            var now = time.GetUtcNow();
            using var certificate = request.CreateSelfSigned(now - ClockSlack, now + Lifetime);
            WritePrivate(Path.Combine(dir, KeyName), key.ExportPkcs8PrivateKeyPem());
            var pem = certificate.ExportCertificatePem();
            WritePrivate(Path.Combine(dir, CertificateName), pem);
            return new PageTransferIdentity(token, pem);
        }
        catch
        {
            Remove(token);
            throw;
        }
    }

    /// <summary>
    /// Records the peer's certificate as the only one identity <paramref name="token"/> trusts, and answers the files CRIU
    /// is given. A certificate that is not exactly one PEM certificate is refused.
    /// </summary>
    public PageTransferTls Pin(string token, string peerCertificate)
    {
        ArgumentNullException.ThrowIfNull(peerCertificate);
        var dir = DirectoryOf(token);
        if (!File.Exists(Path.Combine(dir, KeyName)))
        {
            throw new CrestException(ErrorKind.NotFound,
                $"post-copy page transfer identity {token} is not on this node (under {root}): it ended, or crestd restarted since PreparePageClient; migrate again");
        }

        string pem;
        try
        {
            using var peer = X509Certificate2.CreateFromPem(peerCertificate);
            pem = peer.ExportCertificatePem();
        }
        catch (CryptographicException e)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"the peer certificate for post-copy page transfer {token} is not a PEM certificate: {e.Message}", e);
        }

        var peerFile = Path.Combine(dir, PeerName);
        WritePrivate(peerFile, pem);
        var tls = new PageTransferTls(Path.Combine(dir, CertificateName), Path.Combine(dir, KeyName), peerFile);
        if (new[] { tls.CertificateFile, tls.KeyFile, tls.PeerCertificateFile }.Any(f => f.Any(char.IsWhiteSpace)))
        {
            // A CRIU configuration line is split at white space.
            throw new CrestException(ErrorKind.FailedPrecondition, $"post-copy over TLS needs a node root without white space in its path; {root} has some");
        }

        return tls;
    }

    /// <summary>Removes an identity's key and certificates; an unknown or malformed token is nothing to remove.</summary>
    public void Remove(string token)
    {
        if (IsToken(token))
        {
            FileKinds.Remove(Path.Combine(root, token));
        }
    }

    /// <summary>Whether identity <paramref name="token"/> still exists on this node.</summary>
    public bool Exists(string token) => IsToken(token) && Directory.Exists(Path.Combine(root, token));

    /// <summary>Removes every identity (at crestd's start: no transfer outlives the crestd that set it up); the count removed.</summary>
    public int Sweep()
    {
        if (!Directory.Exists(root))
        {
            return 0;
        }

        var removed = 0;
        foreach (var dir in Directory.EnumerateFileSystemEntries(root))
        {
            FileKinds.Remove(dir);
            removed++;
        }

        return removed;
    }

    /// <summary>
    /// Refuses, with what to do, when this node's CRIU cannot speak TLS: a CRIU built without GnuTLS rejects <c>--tls</c> in
    /// its option check ("CRIU was built without TLS support"), which <c>criu check --tls</c> runs before any check.
    /// </summary>
    public async Task EnsureCriuTlsAsync(CancellationToken ct)
    {
        if (_criuTls.ContainsKey(criuPath))
        {
            return;
        }

        var criu = ExecutableSearch.Resolve(criuPath)
            ?? throw new CrestException(ErrorKind.FailedPrecondition, $"criu '{criuPath}' was not found; post-copy needs it ([checkpoint] criu_path; make deps)");
        var result = await commands.RunAsync(new CriuTlsCheck { CriuPath = criu }.ToCommandLine(), ct).ConfigureAwait(false);
        if ((result.StandardError + result.StandardOutput).Contains(CriuTlsCheck.Unsupported, StringComparison.Ordinal))
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"post-copy encrypts and authenticates the page server with CRIU's TLS, but {criu} was built without TLS support ({CriuTlsCheck.Unsupported.TrimEnd()}); "
                + "install a CRIU built with GnuTLS (its `criu --help` lists --tls), or migrate with --no-page-server-tls to send the memory unencrypted and unauthenticated, or use --strategy stop-copy");
        }

        _criuTls[criuPath] = true;
    }

    private string DirectoryOf(string token) => IsToken(token)
        ? Path.Combine(root, token)
        : throw new CrestException(ErrorKind.InvalidArgument, $"post-copy page transfer identity \"{token}\" is not one this node handed out (24 lowercase hex digits)");

    private static bool IsToken(string token) => token.Length == 24 && token.All(char.IsAsciiHexDigitLower);

    private static void WritePrivate(string path, string text)
    {
        // Created 0600 before any byte is written, never widened.
        using var file = new FileStream(path, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = Private });
        using var writer = new StreamWriter(file);
        writer.Write(text);
    }
}

/// <summary>
/// <c>criu check --tls --feature uffd-noncoop</c>: whether this CRIU accepts <c>--tls</c>. The option check runs before the
/// feature's, so a build without GnuTLS says so whatever the kernel has.
/// </summary>
public sealed record CriuTlsCheck
{
    /// <summary>What CRIU prints when built without GnuTLS (criu/config.c, check_options).</summary>
    public const string Unsupported = "CRIU was built without TLS support";

    public required string CriuPath { get; init; }

    public CommandLine ToCommandLine() => new(CriuPath, ["check", "--tls", "--feature", "uffd-noncoop"]);
}
