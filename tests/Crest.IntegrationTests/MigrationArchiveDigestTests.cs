using System.Security.Cryptography;
using Crest.Api.V1;
using Crest.Daemon.Config;
using Google.Protobuf;
using Grpc.Core;

namespace Crest.IntegrationTests;

/// <summary>
/// A migration archive (and each rootfs round) travels with the SHA-256 of its bytes as a trailer: the node that receives
/// it keeps nothing when the bytes differ, and the node that sends a held archive ends it with the digest of what it sent.
/// </summary>
public class MigrationArchiveDigestTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static Task<DaemonHarness> TargetAsync() =>
        DaemonHarness.StartAsync(c => c with { Restore = new RestoreConfig(ViaCreate: true) });

    private static byte[] Payload()
    {
        var bytes = new byte[150_000];
        new Random(7).NextBytes(bytes);
        return bytes;
    }

    private static async Task<WriteArchiveResponse> SendAsync(CrestMigration.CrestMigrationClient client, byte[] data, byte[]? trailer, bool dataAfterTrailer = false)
    {
        using var call = client.WriteArchive(cancellationToken: Ct);
        for (var offset = 0; offset < data.Length; offset += 64 << 10)
        {
            await call.RequestStream.WriteAsync(new ArchiveChunk { Data = ByteString.CopyFrom(data, offset, Math.Min(64 << 10, data.Length - offset)) }, Ct);
        }

        if (trailer is not null)
        {
            await call.RequestStream.WriteAsync(new ArchiveChunk { Sha256 = ByteString.CopyFrom(trailer) }, Ct);
        }

        if (dataAfterTrailer)
        {
            await call.RequestStream.WriteAsync(new ArchiveChunk { Data = ByteString.CopyFrom(1, 2, 3) }, Ct);
        }

        await call.RequestStream.CompleteAsync();
        return await call.ResponseAsync;
    }

    private static string[] Held(DaemonHarness d)
    {
        var dir = Path.Combine(d.Daemon.Config.Paths.Root, "migrations");
        return Directory.Exists(dir) ? Directory.GetFileSystemEntries(dir) : [];
    }

    [Fact]
    public async Task An_archive_whose_bytes_match_its_trailer_is_kept_and_streams_back_with_the_same_digest()
    {
        await using var d = await TargetAsync();
        var client = new CrestMigration.CrestMigrationClient(d.Channel);
        var data = Payload();

        var stored = await SendAsync(client, data, SHA256.HashData(data));

        Assert.Equal(data.Length, stored.Bytes);
        Assert.Equal(data, await File.ReadAllBytesAsync(stored.Path, Ct));
        // The same archive read back (as a source's held archive streams): its data, then a trailer with its digest.
        using var read = client.ReadArchive(new ReadArchiveRequest { ArchiveToken = stored.ArchiveToken }, cancellationToken: Ct);
        var received = new MemoryStream();
        byte[]? trailer = null;
        await foreach (var chunk in read.ResponseStream.ReadAllAsync(Ct))
        {
            Assert.Null(trailer);
            if (!chunk.Sha256.IsEmpty)
            {
                Assert.True(chunk.Data.IsEmpty);
                trailer = chunk.Sha256.ToByteArray();
                continue;
            }

            chunk.Data.WriteTo(received);
        }

        Assert.Equal(data, received.ToArray());
        Assert.Equal(SHA256.HashData(data), trailer);
    }

    [Fact]
    public async Task An_archive_changed_on_the_way_fails_with_data_loss_naming_both_digests_and_nothing_is_kept()
    {
        await using var d = await TargetAsync();
        var client = new CrestMigration.CrestMigrationClient(d.Channel);
        var data = Payload();
        var sent = SHA256.HashData(data);
        data[100_000] ^= 0x01; // one bit flipped between the sender's digest and the receiver

        var e = await Assert.ThrowsAsync<RpcException>(() => SendAsync(client, data, sent));

        Assert.Equal(StatusCode.DataLoss, e.StatusCode);
        Assert.Contains(Convert.ToHexStringLower(sent), e.Status.Detail, StringComparison.Ordinal);
        Assert.Contains(Convert.ToHexStringLower(SHA256.HashData(data)), e.Status.Detail, StringComparison.Ordinal);
        Assert.Empty(Held(d));
    }

    [Fact]
    public async Task Data_after_the_trailer_is_refused_and_a_stream_without_one_from_an_older_node_is_kept()
    {
        await using var d = await TargetAsync();
        var client = new CrestMigration.CrestMigrationClient(d.Channel);
        var data = Payload();

        var e = await Assert.ThrowsAsync<RpcException>(() => SendAsync(client, data, SHA256.HashData(data), dataAfterTrailer: true));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Empty(Held(d));

        var old = await SendAsync(client, data, trailer: null);
        Assert.Equal(data, await File.ReadAllBytesAsync(old.Path, Ct));
    }

    [Fact]
    public async Task A_rootfs_round_changed_on_the_way_fails_with_data_loss_and_stages_nothing_while_an_intact_one_is_staged()
    {
        await using var d = await TargetAsync();
        var client = new CrestMigration.CrestMigrationClient(d.Channel);
        var data = Payload();

        async Task<WriteRootfsRoundResponse> SendRoundAsync(byte[] bytes, byte[] trailer)
        {
            using var call = client.WriteRootfsRound(cancellationToken: Ct);
            await call.RequestStream.WriteAsync(new RootfsRoundChunk { Data = ByteString.CopyFrom(bytes) }, Ct);
            await call.RequestStream.WriteAsync(new RootfsRoundChunk { Sha256 = ByteString.CopyFrom(trailer) }, Ct);
            await call.RequestStream.CompleteAsync();
            return await call.ResponseAsync;
        }

        var sent = SHA256.HashData(data);
        var changed = (byte[])data.Clone();
        changed[5] ^= 0x80;
        var e = await Assert.ThrowsAsync<RpcException>(() => SendRoundAsync(changed, sent));
        Assert.Equal(StatusCode.DataLoss, e.StatusCode);
        Assert.Contains(Convert.ToHexStringLower(sent), e.Status.Detail, StringComparison.Ordinal);
        Assert.Empty(Held(d));

        var staged = await SendRoundAsync(data, sent);
        Assert.Equal(1, staged.Round);
        Assert.Equal(data.Length, staged.Bytes);
    }

    [Fact]
    public async Task An_archive_unpacked_as_it_arrives_and_changed_on_the_way_fails_with_data_loss_and_leaves_no_checkpoint()
    {
        await using var d = await TargetAsync();
        var client = new CrestMigration.CrestMigrationClient(d.Channel);
        // A real tar, so the unpack as it arrives (what a migration asks for) gets through every entry: the changed byte
        // is in a file's data, which only the trailer can tell.
        var tar = new MemoryStream();
        await using (var writer = new System.Formats.Tar.TarWriter(tar, System.Formats.Tar.TarEntryFormat.Pax, leaveOpen: true))
        {
            var entry = new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.RegularFile, "dump.log") { DataStream = new MemoryStream(Payload()) };
            await writer.WriteEntryAsync(entry, Ct);
        }

        var data = tar.ToArray();
        var sent = SHA256.HashData(data);
        data[data.Length / 2] ^= 0x10;
        var restores = Path.Combine(d.Daemon.Config.Paths.Root, "restores");

        using var call = client.WriteArchive(cancellationToken: Ct);
        await call.RequestStream.WriteAsync(new ArchiveChunk { Data = ByteString.CopyFrom(data), Unpack = true }, Ct);
        await call.RequestStream.WriteAsync(new ArchiveChunk { Sha256 = ByteString.CopyFrom(sent) }, Ct);
        await call.RequestStream.CompleteAsync();
        var e = await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);

        Assert.Equal(StatusCode.DataLoss, e.StatusCode);
        Assert.Empty(Directory.Exists(restores) ? Directory.GetFileSystemEntries(restores) : []);
    }
}
