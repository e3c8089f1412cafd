using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Crest.TestKit;

/// <summary>
/// Debian's distribution registry (docker-registry) on 127.0.0.1 with its own storage, optionally behind
/// htpasswd Basic auth. Stopping it mid-test is how tests cut a pull off.
/// </summary>
public sealed class LocalRegistry : IAsyncDisposable
{
    private readonly TempDir _dir;
    private Process? _process;

    private LocalRegistry(TempDir dir, int port, string config)
    {
        _dir = dir;
        Port = port;
        ConfigFile = config;
    }

    public int Port { get; private set; }

    public string Host => $"127.0.0.1:{Port}";

    public string StorageRoot => _dir.Combine("storage");

    public string ConfigFile { get; }

    private string _auth = "";

    public static async Task<LocalRegistry> StartAsync(string? user = null, string? password = null)
    {
        var binary = Requires.Binary("docker-registry");
        var dir = new TempDir("crest-registry");
        var port = FreePort();
        var auth = "";
        if (user is not null)
        {
            Requires.Binary("htpasswd");
            var htpasswd = dir.Combine("htpasswd");
            var run = Process.Start(new ProcessStartInfo("htpasswd", ["-Bbn", user, password ?? ""]) { RedirectStandardOutput = true })!;
            await File.WriteAllTextAsync(htpasswd, await run.StandardOutput.ReadToEndAsync());
            await run.WaitForExitAsync();
            auth = $"auth:\n  htpasswd:\n    realm: crest-test\n    path: {htpasswd}\n";
        }

        var registry = new LocalRegistry(dir, port, dir.Combine("config.yml")) { _auth = auth };
        _ = binary;
        // A free port can be taken between the probe and docker-registry's bind: a registry that exits at once gets another.
        for (var attempt = 1; ; attempt++)
        {
            await registry.WriteConfigAsync();
            try
            {
                await registry.StartProcessAsync();
                return registry;
            }
            catch (InvalidOperationException) when (attempt < 5)
            {
                registry.Port = FreePort();
            }
        }
    }

    private Task WriteConfigAsync() => File.WriteAllTextAsync(ConfigFile, $"""
        version: 0.1
        log:
          level: error
          accesslog:
            disabled: true
        storage:
          filesystem:
            rootdirectory: {StorageRoot}
          delete:
            enabled: true
        http:
          addr: 127.0.0.1:{Port}
        {_auth}
        """);

    /// <summary>Starts (or restarts) the registry process and waits until /v2/ answers.</summary>
    public async Task StartProcessAsync()
    {
        var start = new ProcessStartInfo("docker-registry", ["serve", ConfigFile])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        _process = Process.Start(start)!;
        _process.OutputDataReceived += (_, _) => { };
        _process.ErrorDataReceived += (_, _) => { };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        using var http = new HttpClient();
        var answered = await Eventually.LastAsync(
            async () =>
            {
                if (_process.HasExited)
                {
                    throw new InvalidOperationException($"docker-registry exited at start (exit code {_process.ExitCode}); is {Host} taken?");
                }

                try
                {
                    using var r = await http.GetAsync(new Uri($"http://{Host}/v2/"));
                    return r.StatusCode is HttpStatusCode.OK or HttpStatusCode.Unauthorized;
                }
                catch (HttpRequestException)
                {
                    return false;
                }
            },
            ok => ok, TimeSpan.FromSeconds(30));
        if (!answered)
        {
            throw new TimeoutException($"docker-registry did not answer on {Host}");
        }
    }

    public async Task StopProcessAsync()
    {
        if (_process is { HasExited: false } p)
        {
            p.Kill();
            await p.WaitForExitAsync();
        }
    }

    /// <summary>The registry's file for a blob: tests corrupt it to serve wrong bytes.</summary>
    public string BlobDataPath(string digest)
    {
        var hex = digest["sha256:".Length..];
        return Path.Combine(StorageRoot, "docker", "registry", "v2", "blobs", "sha256", hex[..2], hex, "data");
    }

    public async ValueTask DisposeAsync()
    {
        await StopProcessAsync();
        _process?.Dispose();
        _dir.Dispose();
    }

    public static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }
}
