using Crest.Api.V1;
using Crest.Daemon.Cri;
using Grpc.Core;

namespace Crest.UnitTests;

/// <summary>An archive made as it streams goes out in chunks that stay off the large object heap and add up to it.</summary>
public sealed class ArchiveChunkStreamTests
{
    private sealed class Collected : IServerStreamWriter<ArchiveChunk>
    {
        public List<ArchiveChunk> Messages { get; } = [];

        public WriteOptions? WriteOptions { get; set; }

        public Task WriteAsync(ArchiveChunk message)
        {
            Messages.Add(message);
            return Task.CompletedTask;
        }

        public Task WriteAsync(ArchiveChunk message, CancellationToken cancellationToken) => WriteAsync(message);
    }

    [Fact]
    public async Task Writes_of_any_size_go_out_as_64_KiB_chunks_and_a_flush_sends_the_rest()
    {
        var ct = TestContext.Current.CancellationToken;
        var data = new byte[(200 << 10) + 123];
        new Random(7).NextBytes(data);
        var collected = new Collected();
        await using var stream = new ArchiveChunkStream(collected, ct);

        // Writes of awkward sizes, as a tar writer makes them (512-byte headers, file data).
        for (var at = 0; at < data.Length;)
        {
            var n = Math.Min(at % 3 == 0 ? 512 : 70_000, data.Length - at);
            await stream.WriteAsync(data.AsMemory(at, n), ct);
            at += n;
        }

        await stream.FlushAsync(ct);

        Assert.All(collected.Messages.SkipLast(1), m => Assert.Equal(64 << 10, m.Data.Length));
        Assert.True(collected.Messages.All(m => m.Data.Length < 85_000));
        Assert.Equal(data, collected.Messages.SelectMany(m => m.Data.ToByteArray()).ToArray());
    }
}
