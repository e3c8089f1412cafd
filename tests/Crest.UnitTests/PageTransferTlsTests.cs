using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Crest.Core;
using Crest.Runtime;
using Crest.TestKit;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>
/// Post-copy over CRIU's TLS: each node's fresh key pair stays in a private directory of its own, the dump's CRIU
/// configuration and the target's lazy-pages flags name the right files, and the keys go when the transfer ends.
/// </summary>
public sealed class PageTransferTlsTests : IDisposable
{
    private readonly TempDir _dir = new("page-tls");
    private readonly RuntimeHarness _h = new();
    private readonly Answers _commands = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A command runner that answers every program with one canned result, and records what ran.</summary>
    private sealed class Answers : ICommandRunner
    {
        public CommandResult Result { get; set; } = new(0, "uffd-noncoop is supported\n", "");

        public List<string> Lines { get; } = [];

        public Task<CommandResult> RunAsync(CommandLine command, CancellationToken ct)
        {
            Lines.Add(command.ToString());
            return Task.FromResult(Result);
        }
    }

    private PageTransferIdentities Identities() => new(_dir.Combine("root/migrations/page-tls"), _commands, "/bin/sh");

    [Fact]
    public void Each_identity_is_a_fresh_p256_key_in_a_private_directory_with_a_self_signed_certificate_for_it()
    {
        var identities = Identities();

        var a = identities.Create(TimeProvider.System);
        var b = identities.Create(TimeProvider.System);

        Assert.NotEqual(a.Token, b.Token);
        var dir = Path.Combine(identities.Root, a.Token);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(dir));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(dir, "key.pem")));
        using var certificate = X509Certificate2.CreateFromPem(a.Certificate, File.ReadAllText(Path.Combine(dir, "key.pem")));
        Assert.True(certificate.HasPrivateKey);
        Assert.Equal(certificate.Subject, certificate.Issuer);
        using var key = certificate.GetECDsaPublicKey()!;
        Assert.Equal(256, key.KeySize);
        Assert.True(certificate.NotBefore < DateTime.Now && certificate.NotAfter > DateTime.Now);
        Assert.DoesNotContain("PRIVATE KEY", a.Certificate, StringComparison.Ordinal);
        using var other = X509Certificate2.CreateFromPem(b.Certificate);
        Assert.NotEqual(certificate.GetPublicKeyString(), other.GetPublicKeyString());
    }

    [Fact]
    public void Pinning_the_peer_writes_its_certificate_as_the_only_ca_and_refuses_what_is_not_a_certificate()
    {
        var identities = Identities();
        var mine = identities.Create(TimeProvider.System);
        var peer = identities.Create(TimeProvider.System);

        var tls = identities.Pin(mine.Token, peer.Certificate);

        Assert.Equal(peer.Certificate.Trim(), File.ReadAllText(tls.PeerCertificateFile).Trim());
        Assert.Equal(Path.Combine(identities.Root, mine.Token, "key.pem"), tls.KeyFile);
        Assert.Equal(mine.Certificate.Trim(), File.ReadAllText(tls.CertificateFile).Trim());
        var bad = Assert.Throws<CrestException>(() => identities.Pin(peer.Token, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"));
        Assert.Equal(ErrorKind.InvalidArgument, bad.Kind);
        var gone = Assert.Throws<CrestException>(() => identities.Pin(new string('a', 24), peer.Certificate));
        Assert.Equal(ErrorKind.NotFound, gone.Kind);
    }

    [Fact]
    public void Removing_and_sweeping_leave_no_key_material()
    {
        var identities = Identities();
        var a = identities.Create(TimeProvider.System);
        var b = identities.Create(TimeProvider.System);

        identities.Remove(a.Token);
        identities.Remove("../../etc");

        Assert.False(identities.Exists(a.Token));
        Assert.True(identities.Exists(b.Token));
        Assert.Equal(1, identities.Sweep());
        Assert.Empty(Directory.EnumerateFileSystemEntries(identities.Root));
    }

    [Fact]
    public async Task A_criu_built_without_tls_is_refused_with_what_to_do()
    {
        var identities = Identities();
        _commands.Result = new CommandResult(1, "", "Error (criu/config.c:1170): CRIU was built without TLS support\n");

        var e = await Assert.ThrowsAsync<CrestException>(() => identities.EnsureCriuTlsAsync(Ct));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains("built without TLS support", e.Message, StringComparison.Ordinal);
        Assert.Contains("--no-page-server-tls", e.Message, StringComparison.Ordinal);
        Assert.Equal(["/bin/sh check --tls --feature uffd-noncoop"], _commands.Lines);
    }

    [Fact]
    public void The_target_lazy_pages_daemon_is_given_its_key_pair_and_the_source_certificate_as_its_only_ca()
    {
        var tls = new PageTransferTls("/k/cert.pem", "/k/key.pem", "/k/peer.pem");
        var daemon = new CriuLazyPagesOptions { ImagePath = "/d/images", WorkPath = "/d/bundle", Address = "10.0.0.1", Port = 4100, Tls = tls };

        var argv = daemon.Arguments("/usr/sbin/criu");

        Assert.Equal(["--tls", "--tls-cacert", "/k/peer.pem", "--tls-cert", "/k/cert.pem", "--tls-key", "/k/key.pem", "--tls-no-cn-verify"], argv.SkipWhile(a => a != "--tls"));
        Assert.DoesNotContain("--tls", (daemon with { Tls = null }).Arguments("/usr/sbin/criu"));
    }

    [Fact]
    public async Task A_post_copy_dump_over_tls_names_the_key_pair_and_the_pinned_client_in_its_criu_configuration_for_that_dump_only()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await _h.RecordRunningAsync("c1", pod.Id, Ct);
        var config = _h.Layout.Container(c.Id).CriuConfig;
        var tls = new PageTransferTls("/k/cert.pem", "/k/key.pem", "/k/peer.pem");
        string? duringDump = null;
        _h.Runtimes.DuringCheckpoint = _ => duringDump = File.ReadAllText(config);

        var dump = await _h.Containers.DumpAsync(c.Id, "/images", "/work", tcpEstablished: false, (_, _, _) => Task.CompletedTask, Ct,
            lazyPageServer: "127.0.0.1:4100", pageServerTls: tls);
        await dump.PageServer!.KillAsync();

        Assert.Equal("network-lock skip\ntls\ntls-cacert /k/peer.pem\ntls-cert /k/cert.pem\ntls-key /k/key.pem\ntls-no-cn-verify\n", duringDump);
        Assert.False(File.Exists(config));
    }

    [Fact]
    public void The_certificates_travel_in_new_fields_and_a_new_rpc_whose_numbers_are_pinned()
    {
        Assert.Equal(6, Crest.Api.V1.FreezeRequest.PageClientCertificateFieldNumber);
        Assert.Equal(9, Crest.Api.V1.FreezeResponse.PageServerCertificateFieldNumber);
        Assert.Equal(1, Crest.Api.V1.PreparePageClientResponse.IdentityTokenFieldNumber);
        Assert.Equal(2, Crest.Api.V1.PreparePageClientResponse.CertificateFieldNumber);
    }

    public void Dispose()
    {
        _h.Dispose();
        _dir.Dispose();
    }
}
