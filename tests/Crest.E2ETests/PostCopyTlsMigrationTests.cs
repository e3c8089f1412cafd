using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Crest.Api.V1;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

/// <summary>
/// The post-copy page server over CRIU's TLS, against a real crestd, runc and CRIU: the test freezes the counter on node A
/// through crest.v1.CrestMigration as a target would, with a page client certificate of its own, and then knocks on the
/// page server as someone who does not hold that certificate's key. Neither a TLS client with another certificate nor a
/// plain TCP client gets page data; the source runs on after Resume.
/// </summary>
[Collection(TwoNodes.Collection)]
public sealed class PostCopyTlsMigrationTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A self-signed P-256 certificate with its key, usable as a TLS client certificate.</summary>
    private static X509Certificate2 SelfSigned(string name)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        using var made = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddHours(-1), DateTimeOffset.UtcNow.AddDays(1));
        // Through PKCS#12, so the platform's TLS can use the key.
        return X509CertificateLoader.LoadPkcs12(made.Export(X509ContentType.Pkcs12), null);
    }

    /// <summary>A page request as CRIU's lazy-pages sends it (struct page_server_iov: cmd, nr_pages, vaddr, dst_id), for pages of pid 1.</summary>
    private static byte[] PageRequest()
    {
        var request = new byte[24];
        BitConverter.TryWriteBytes(request.AsSpan(0), 11u); // PS_IOV_GET
        BitConverter.TryWriteBytes(request.AsSpan(4), 1u);
        BitConverter.TryWriteBytes(request.AsSpan(8), 0x400000UL);
        BitConverter.TryWriteBytes(request.AsSpan(16), 1UL);
        return request;
    }

    private static (string Host, int Port) Endpoint(string pageServer)
    {
        var colon = pageServer.LastIndexOf(':');
        return (pageServer[..colon], int.Parse(pageServer[(colon + 1)..], System.Globalization.CultureInfo.InvariantCulture));
    }

    /// <summary>Waits until node A's page server (runc checkpoint --lazy-pages and its CRIU) has ended.</summary>
    private static Task PageServerEndedAsync(TwoNodes nodes) =>
        Eventually.UntilAsync(() => MigrationTests.ProcessesWith("checkpoint", "--lazy-pages", nodes.A.Dir.Combine("root")).Count == 0,
            "A's page server to end after the refused client", TimeSpan.FromSeconds(30), Ct);

    [Fact]
    public async Task A_page_client_without_the_pinned_certificate_gets_no_page_and_the_source_runs_on()
    {
        MigrationTests.RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migtls");
        await MigrationTests.RequirePostCopyAsync(nodes);
        var image = await MigrationTests.RegistryBusyboxOnAAsync(nodes);
        var (id, logA) = await MigrationTests.RunCounterOnAAsync(nodes, image);
        using var channel = UnixGrpc.Channel(nodes.A.Crestd.Socket);
        var migration = new CrestMigration.CrestMigrationClient(channel);
        using var target = SelfSigned("the real target");
        using var intruder = SelfSigned("an intruder");

        // 1. A TLS client with a certificate of its own: the page server's handshake refuses it before any page.
        var frozen = await migration.FreezeAsync(new FreezeRequest { ContainerId = id, PageServerAddress = "127.0.0.1", PageClientCertificate = target.ExportCertificatePem() },
            cancellationToken: Ct);
        Assert.NotEmpty(frozen.PageServerCertificate);
        var keys = MigrationTests.PageTransferKeys(nodes.A).ToList();
        var key = Assert.Single(keys, k => k.EndsWith("/key.pem", StringComparison.Ordinal));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(key));
        var (host, port) = Endpoint(frozen.PageServer);
        using var announced = X509Certificate2.CreateFromPem(frozen.PageServerCertificate);
        string? presented = null;
        var pageBytes = 0;
        Exception? refused = null;
        using (var tcp = new TcpClient())
        {
            await tcp.ConnectAsync(host, port, Ct);
            // The intruder even knows which certificate to expect: the one Freeze announced, which the real target pins.
            await using var tls = new SslStream(tcp.GetStream(), false, (_, certificate, _, _) =>
            {
                // Read here: the certificate goes with the connection.
                presented = certificate?.GetCertHashString();
                return presented == announced.GetCertHashString();
            });
            try
            {
                await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = "crest", ClientCertificates = [intruder] }, Ct);
                await tls.WriteAsync(PageRequest(), Ct);
                var buffer = new byte[1 << 16];
                int n;
                while ((n = await tls.ReadAsync(buffer, Ct)) > 0)
                {
                    pageBytes += n;
                }
            }
            catch (Exception e) when (e is IOException or System.Security.Authentication.AuthenticationException)
            {
                refused = e;
            }
        }

        Assert.Equal(0, pageBytes);
        // The server spoke TLS with the certificate Freeze announced (the one the real target would pin).
        Assert.Equal(announced.GetCertHashString(), presented);

        // CRIU's page server serves one connection: the refused one ended it, and its key pair went with it.
        await PageServerEndedAsync(nodes);
        await Eventually.UntilAsync(() => !MigrationTests.PageTransferKeys(nodes.A).Any(), "A's page server key pair to be removed", TimeSpan.FromSeconds(10), Ct);
        await migration.ResumeAsync(new ResumeRequest { ContainerId = id }, cancellationToken: Ct);
        await migration.DropArchiveAsync(new DropArchiveRequest { ArchiveToken = frozen.ArchiveToken }, cancellationToken: Ct);
        Assert.Equal("CONTAINER_RUNNING", await StateAsync(nodes.A.R, id));

        // 2. A plain TCP client: what it reads is at most TLS's refusal (an alert record), never page data.
        var again = await migration.FreezeAsync(new FreezeRequest { ContainerId = id, PageServerAddress = "127.0.0.1", PageClientCertificate = target.ExportCertificatePem() },
            cancellationToken: Ct);
        (host, port) = Endpoint(again.PageServer);
        var received = new List<byte>();
        using (var tcp = new TcpClient())
        {
            await tcp.ConnectAsync(host, port, Ct);
            var stream = tcp.GetStream();
            await stream.WriteAsync(PageRequest(), Ct);
            var buffer = new byte[1 << 16];
            try
            {
                int n;
                while ((n = await stream.ReadAsync(buffer, Ct)) > 0)
                {
                    received.AddRange(buffer.AsSpan(0, n).ToArray());
                }
            }
            catch (IOException)
            {
                // Reset by the page server once it gave up on the handshake.
            }
        }

        Assert.True(received.Count <= 7 && (received.Count == 0 || received[0] == 0x15),
            $"a plain client read {received.Count} bytes from the page server: {Convert.ToHexString(received.Take(32).ToArray())}");
        await PageServerEndedAsync(nodes);
        await migration.ResumeAsync(new ResumeRequest { ContainerId = id }, cancellationToken: Ct);
        await migration.DropArchiveAsync(new DropArchiveRequest { ArchiveToken = again.ArchiveToken }, cancellationToken: Ct);

        // The source counts on, and nothing of either attempt is left.
        var before = LastCount(await File.ReadAllTextAsync(logA, Ct));
        await CountPassesAsync(logA, before + 2);
        Assert.Empty(MigrationTests.PageTransferKeys(nodes.A));
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.A.Dir.Combine("root", "migrations")));
        TestContext.Current.TestOutputHelper?.WriteLine($"refused TLS client: {refused?.GetType().Name}: {refused?.Message}; plain client read {received.Count} bytes: {Convert.ToHexString(received.ToArray())}");
    }
}
