using System.Diagnostics;
using Crest.TestKit;
using Runtime.V1;

namespace Crest.Bench;

/// <summary>The measured CRI calls; the same code drives every subject.</summary>
internal static class Scenarios
{
    /// <summary>Polls Version every 2 ms until it answers: "ready" means a CRI client gets an answer.</summary>
    public static async Task WaitReadyAsync(string socket, TimeSpan timeout)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < timeout)
        {
            if (File.Exists(socket))
            {
                using var channel = UnixGrpc.Channel(socket);
                try
                {
                    await new RuntimeService.RuntimeServiceClient(channel).VersionAsync(new VersionRequest(), deadline: DateTime.UtcNow.AddSeconds(5));
                    return;
                }
                catch (Grpc.Core.RpcException)
                {
                }
            }

            await Task.Delay(2);
        }

        throw new TimeoutException($"no CRI answer on {socket} within {timeout}");
    }

    /// <summary>Four layers of 25 MB of random bytes (incompressible, so gzip does not shrink the transfer).</summary>
    public static async Task<string> PushLargeImageAsync(LocalRegistry registry, string layoutDir)
    {
        var layers = Enumerable.Range(0, 4).Select(i => new TestLayer(LayerCompression.Gzip, t =>
        {
            var data = new byte[25 * 1024 * 1024];
            new Random(i).NextBytes(data);
            TestImages.File(t, $"data/blob{i}", data);
        })).ToList();
        TestImages.WriteLayout(layoutDir, layers, "v1");
        var image = $"{registry.Host}/bench/large:v1";
        await TestImages.PushAsync(layoutDir, "v1", image);
        return image;
    }

    /// <summary>One CRI PullImage, timed.</summary>
    public static async Task<TimeSpan> PullAsync(string socket, string image)
    {
        using var channel = UnixGrpc.Channel(socket);
        var client = new ImageService.ImageServiceClient(channel);
        var t = Stopwatch.GetTimestamp();
        await client.PullImageAsync(new PullImageRequest { Image = new ImageSpec { Image = image } }, deadline: DateTime.UtcNow.AddMinutes(5));
        return Stopwatch.GetElapsedTime(t);
    }

    /// <summary>Sequential Version calls on one channel; each latency in milliseconds goes to <paramref name="sample"/>.</summary>
    public static async Task VersionLatencyAsync(string socket, int calls, Action<double> sample)
    {
        using var channel = UnixGrpc.Channel(socket);
        var client = new RuntimeService.RuntimeServiceClient(channel);
        var request = new VersionRequest { Version = "0.1.0" };
        for (var i = 0; i < calls; i++)
        {
            var t = Stopwatch.GetTimestamp();
            await client.VersionAsync(request);
            sample(Stopwatch.GetElapsedTime(t).TotalMilliseconds);
        }
    }
}
