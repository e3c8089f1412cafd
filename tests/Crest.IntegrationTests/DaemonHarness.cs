using Crest.Core;
using Crest.Daemon;
using Crest.Daemon.Config;
using Crest.TestKit;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging;
using Runtime.V1;

namespace Crest.IntegrationTests;

/// <summary>An in-process crestd on temporary roots, its own CNI conf dir, and raw CRI clients to it.</summary>
internal sealed class DaemonHarness : IAsyncDisposable
{
    private DaemonHarness(TempDir dir, CrestDaemon daemon, GrpcChannel channel)
    {
        Dir = dir;
        Daemon = daemon;
        Channel = channel;
    }

    public TempDir Dir { get; }

    public CrestDaemon Daemon { get; }

    public GrpcChannel Channel { get; }

    public string Socket => Daemon.Config.Paths.Socket;

    public RuntimeService.RuntimeServiceClient Runtime => new(Channel);

    public ImageService.ImageServiceClient Images => new(Channel);

    /// <summary>A configuration on fresh temporary roots with a valid CNI network; <paramref name="adjust"/> changes it.</summary>
    public static CrestConfig Config(TempDir dir, Func<CrestConfig, CrestConfig>? adjust = null)
    {
        var conf = dir.CreateDirectory("cni");
        CniFixture.WriteBridgeConflist(conf);
        var config = new CrestConfig
        {
            Paths = new CrestPaths(dir.Combine("root"), dir.Combine("state"), dir.Combine("state", "crest.sock")),
            Cni = new Crest.Runtime.CniOptions(conf, [CniFixture.HostPluginDir]),
            Log = new LogConfig("warning"),
        };
        return adjust is null ? config : adjust(config);
    }

    public static async Task<DaemonHarness> StartAsync(Func<CrestConfig, CrestConfig>? adjust = null)
    {
        var dir = new TempDir("crest-it");
        try
        {
            var daemon = await CrestDaemon.StartAsync(Config(dir, adjust), TestContext.Current.CancellationToken,
                logging => logging.SetMinimumLevel(LogLevel.Warning));
            return new DaemonHarness(dir, daemon, UnixGrpc.Channel(daemon.Config.Paths.Socket));
        }
        catch
        {
            dir.Dispose();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        // A test's pods must not outlive it: remove them (and their containers, cgroups, netns) through CRI.
        try
        {
            var pods = await Runtime.ListPodSandboxAsync(new ListPodSandboxRequest());
            foreach (var p in pods.Items)
            {
                await Runtime.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = p.Id });
            }
        }
        catch (Grpc.Core.RpcException)
        {
        }

        Channel.Dispose();
        await Daemon.DisposeAsync();
        Dir.Dispose();
    }
}
