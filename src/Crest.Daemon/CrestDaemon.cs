using Crest.Checkpoint;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Daemon.Config;
using Crest.Daemon.Cri;
using Crest.Daemon.Hosting;
using Crest.Images;
using Crest.Runtime;
using Crest.Store;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Crest.Daemon;

/// <summary>
/// crestd as an object: takes the roots and the socket, opens the store, serves CRI v1 over gRPC on a unix
/// socket, and gives everything back on stop. Program.cs runs one; integration tests run it in-process
/// on temporary roots.
/// </summary>
public sealed class CrestDaemon : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly DaemonLock _lock;
    private readonly ILogger _logger;

    private CrestDaemon(WebApplication app, DaemonLock daemonLock, CrestConfig config, ILogger logger)
    {
        _app = app;
        _lock = daemonLock;
        _logger = logger;
        Config = config;
    }

    public CrestConfig Config { get; }

    /// <summary>The daemon's services, for in-process tests that look below the CRI.</summary>
    public IServiceProvider Services => _app.Services;

    /// <summary>Completes when the daemon has stopped (SIGTERM, SIGINT or <see cref="StopAsync"/>).</summary>
    public Task Completion => _app.WaitForShutdownAsync();

    /// <summary>Fires when a graceful stop begins (SIGTERM, SIGINT).</summary>
    public CancellationToken Stopping => _app.Lifetime.ApplicationStopping;

    public static async Task<CrestDaemon> StartAsync(CrestConfig config, CancellationToken ct, Action<ILoggingBuilder>? configureLogging = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var paths = config.Paths;
        Directory.CreateDirectory(paths.Root);
        Directory.CreateDirectory(paths.State);
        var daemonLock = DaemonLock.Acquire(paths.DaemonLock, paths.RootLock);
        WebApplication? started = null;
        try
        {
            var staleRemoved = await SocketGuard.PrepareAsync(paths.Socket, ct).ConfigureAwait(false);

            // crestd's configuration is config.toml, never an appsettings.json from wherever it was started. The host's
            // default watches appsettings.json under its content root (the working directory) and so puts an inotify
            // watch on every directory below it: the whole filesystem for a crestd started in / by systemd. No reload,
            // the binary's own directory as the content root, and no JSON sources.
            var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
            {
                Args = ["--hostBuilder:reloadConfigOnChange=false"],
                ApplicationName = "crestd",
                ContentRootPath = AppContext.BaseDirectory,
            });
            foreach (var json in builder.Configuration.Sources.OfType<Microsoft.Extensions.Configuration.Json.JsonConfigurationSource>().ToList())
            {
                builder.Configuration.Sources.Remove(json);
            }

            builder.Logging.ClearProviders();
            builder.Logging.SetMinimumLevel(ParseLevel(config.Log.Level));
            // Kestrel and gRPC chatter stays out of crestd's log unless asked for.
            builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
            builder.Logging.AddFilter("Grpc", LogLevel.Warning);
            if (config.Log.Format == LogFormat.Json)
            {
                builder.Logging.AddJsonConsole(o => { o.IncludeScopes = true; o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ "; o.UseUtcTimestamp = true; });
            }
            else
            {
                builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.IncludeScopes = true; o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ "; o.UseUtcTimestamp = true; });
            }

            configureLogging?.Invoke(builder.Logging);
            builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(10));
            builder.WebHost.ConfigureKestrel(k =>
            {
                k.ListenUnixSocket(paths.Socket, l => l.Protocols = HttpProtocols.Http2);
                // The streaming server (Exec, Attach, PortForward URLs): WebSocket needs HTTP/1.1.
                k.Listen(System.Net.IPAddress.Parse(config.Streaming.Address), config.Streaming.Port, l => l.Protocols = HttpProtocols.Http1);
                if (config.Metrics.Endpoint is { } metrics)
                {
                    k.Listen(metrics, l => l.Protocols = HttpProtocols.Http1);
                }

                k.AddServerHeader = false;
                // A live migration's checkpoint archive streams in over one HTTP/2 stream (crest.v1.CrestMigration
                // WriteArchive): Kestrel's default windows (128/96 KiB) hold it to a few tens of MB/s.
                k.Limits.Http2.InitialConnectionWindowSize = 16 << 20;
                k.Limits.Http2.InitialStreamWindowSize = 8 << 20;
            });

            var time = TimeProvider.System;
            var hostConfigured = clock.Elapsed;
            var store = await MetadataStore.OpenAsync(paths.Database, time, ct).ConfigureAwait(false);
            var storeOpened = clock.Elapsed;
            builder.Services.AddSingleton(time);
            builder.Services.AddSingleton(config);
            builder.Services.AddSingleton(paths);
            builder.Services.AddSingleton(store);
            builder.Services.AddSingleton(config.Runtime);
            builder.Services.AddSingleton(config.Cni);
            builder.Services.AddSingleton(new CheckpointSwitch(config.Checkpoint.Enabled, config.Restore.ViaCreate));
            builder.Services.AddSingleton<ICommandRunner, ProcessCommandRunner>();
            builder.Services.AddSingleton<RuntimeHandlerProbe>();
            builder.Services.AddSingleton<ICriuProbe>(new CriuSwrkProbe(config.Checkpoint.CriuPath, config.Checkpoint.MinimumCriuVersion, time));
            builder.Services.AddSingleton(new ServiceFacts(config.Metrics.Address, SystemdUnit()));
            builder.Services.AddSingleton<NodeStatusService>();
            var imageMetadata = new SqliteImageMetadataStore(store);
            var contentStore = new ContentStore(paths.Content);
            var snapshotter = new OverlaySnapshotter(paths.Snapshots, imageMetadata, time);
            // Interrupted downloads and unpacks from a previous life leave only temporary files: drop them.
            contentStore.CleanIngest();
            await snapshotter.CleanOrphansAsync(ct).ConfigureAwait(false);
            builder.Services.AddSingleton<IImageMetadataStore>(imageMetadata);
            builder.Services.AddSingleton<IContentStore>(contentStore);
            builder.Services.AddSingleton<ISnapshotter>(snapshotter);
            builder.Services.AddSingleton(config.Registries);
            // One client for the daemon's life: it caches registry tokens; connections are recycled every few minutes.
            builder.Services.AddSingleton<IRegistryClient>(new RegistryClient(config.Registries, new HttpClient(new SocketsHttpHandler
            {
                AutomaticDecompression = System.Net.DecompressionMethods.None,
                ConnectTimeout = TimeSpan.FromSeconds(15),
                PooledConnectionLifetime = TimeSpan.FromMinutes(5),
            })
            {
                Timeout = TimeSpan.FromMinutes(30),
            }));
            // A blob is downloaded into the content store and a layer unpacked into the snapshots: their disks are checked.
            builder.Services.AddSingleton(new ImageServiceOptions(config.Images)
            {
                ContentFilesystem = paths.Content,
                SnapshotFilesystem = paths.Snapshots,
            });
            builder.Services.AddSingleton<Crest.Images.ImageService>();
            builder.Services.AddSingleton<Crest.Linux.ILinux, Crest.Linux.LinuxSyscalls>();
            builder.Services.AddSingleton<IRuntimeStore>(new SqliteRuntimeStore(store));
            builder.Services.AddSingleton<RuntimeLayout>();
            builder.Services.AddSingleton<ConmonExits>();
            builder.Services.AddSingleton<IOciRuntimeFactory, ConmonOciRuntimeFactory>();
            builder.Services.AddSingleton<INetwork, CniNetwork>();
            builder.Services.AddSingleton<DirectoryReaper>();
            builder.Services.AddSingleton<ContainerBundles>();
            builder.Services.AddSingleton<UserNamespaces>();
            builder.Services.AddSingleton<SandboxService>();
            // Post-copy page transfers' key pairs, one private directory each under the node's root.
            builder.Services.AddSingleton(sp => new PageTransferIdentities(Path.Combine(paths.Root, "page-tls"), sp.GetRequiredService<ICommandRunner>(), config.Checkpoint.CriuPath));
            builder.Services.AddSingleton(sp => new LazyPageTransfers(config.Checkpoint.CriuPath, time, sp.GetRequiredService<ILogger<LazyPageTransfers>>(), sp.GetRequiredService<PageTransferIdentities>()));
            builder.Services.AddSingleton<ContainerService>();
            var restoreOptions = new RestoreOptions
            {
                // Restore needs CRIU too: [checkpoint] enabled = false turns both off.
                ViaCreate = config.Restore.ViaCreate && config.Checkpoint.Enabled,
                TcpEstablished = config.Restore.TcpEstablished,
                RelaxedChecks = config.Restore.RelaxedChecks.ToHashSet(StringComparer.Ordinal),
                // Containers' root filesystems, where a restore writes the rootfs diff, live under the root.
                Limits = config.Restore.Limits with { TargetFilesystem = paths.Root },
            };
            builder.Services.AddSingleton(restoreOptions);
            builder.Services.AddSingleton<PodRestoreHolds>();
            builder.Services.AddSingleton<IRestoreSteps, RestoreSteps>();
            builder.Services.AddSingleton<RootfsStaging>();
            builder.Services.AddSingleton(new ArchivePagesOptions { Enabled = config.Restore.PagesInPlace, MinimumBytes = config.Restore.PagesInPlaceMinBytes });
            builder.Services.AddSingleton<ArchivePageMounts>();
            builder.Services.AddSingleton<RestoreService>();
            builder.Services.AddSingleton(new CheckpointOptions
            {
                Enabled = config.Checkpoint.Enabled,
                TcpEstablished = config.Checkpoint.TcpEstablished,
                DefaultTimeout = TimeSpan.FromSeconds(config.Checkpoint.TimeoutSeconds),
                Compression = CheckpointArchive.ParseCompression(config.Checkpoint.Compression),
                WorkMemory = config.Checkpoint.WorkInMemory switch { "never" => CheckpointWorkMemory.Never, "tmpfs" => CheckpointWorkMemory.Tmpfs, _ => CheckpointWorkMemory.Auto },
            });
            builder.Services.AddSingleton<CheckpointService>();
            builder.Services.AddSingleton<PodOperationJournal>();
            builder.Services.AddSingleton<PodCheckpointService>();
            builder.Services.AddSingleton<PodCheckpointSources>();
            builder.Services.AddSingleton<PodRestoreService>();
            builder.Services.AddSingleton<CheckpointServices>();
            builder.Services.AddSingleton(new CriuKernelFactsOptions
            {
                Enabled = config.Checkpoint.Enabled && config.Checkpoint.KeepCriuKernelFacts,
                CriuPath = config.Checkpoint.CriuPath,
                CacheFile = Path.Combine(paths.Root, "criu", "kernel-facts.kdat"),
                Probe = Hosting.CriuKernelFactsKeeper.ProbeCommand(),
            });
            builder.Services.AddSingleton<CriuKernelFactsCache>();
            builder.Services.AddHostedService<Hosting.CriuKernelFactsKeeper>();
            builder.Services.AddSingleton<MigrationNetworkLock>();
            builder.Services.AddSingleton<MigrationService>();
            builder.Services.AddSingleton<PodService>();
            builder.Services.AddSingleton<RuntimeEvents>();
            builder.Services.AddHostedService<Hosting.ExitWatcher>();
            builder.Services.AddSingleton<Hosting.CallActivity>();
            builder.Services.AddHostedService<Hosting.MemoryTrimmer>();
            builder.Services.AddSingleton<Metrics.ObjectMetrics>();
            builder.Services.AddSingleton<Streaming.StreamRequestCache>();
            builder.Services.AddSingleton<Streaming.StreamingServer>();
            builder.Services.AddGrpc(o =>
            {
                // Outermost: the metrics see the status code the error interceptor chose.
                o.Interceptors.Add<Hosting.CallActivity>();
                o.Interceptors.Add<Metrics.CriMetricsInterceptor>();
                o.Interceptors.Add<ErrorInterceptor>();
                o.EnableDetailedErrors = false;
                o.MaxReceiveMessageSize = 16 * 1024 * 1024;
            });
            MethodBindings.Use(builder.Services);

            Metrics.MetricsEndpoint.Configure();
            var servicesAdded = clock.Elapsed;
            var app = builder.Build();
            app.Services.GetRequiredService<Metrics.ObjectMetrics>();
            app.UseWebSockets(new WebSocketOptions { KeepAliveInterval = TimeSpan.FromSeconds(30) });
            // Requests on the TCP endpoint are the streaming server's; gRPC is served only on the unix socket.
            var streaming = app.Services.GetRequiredService<Streaming.StreamingServer>();
            // The metrics endpoint, when configured, is the one TCP port that is not the streaming server's.
            var metricsPort = config.Metrics.Endpoint?.Port;
            app.Use(next => context => context.Connection.LocalIpAddress is null ? next(context)
                : context.Connection.LocalPort == metricsPort ? Metrics.MetricsEndpoint.HandleAsync(context)
                : streaming.HandleAsync(context));
            app.MapGrpcService<CriRuntimeService>();
            app.MapGrpcService<CriImageService>();
            app.MapGrpcService<CrestImagesService>();
            app.MapGrpcService<CrestMigrationService>();
            MethodBindings.Verify(app);

            var logger = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("crestd");
            if (staleRemoved)
            {
                DaemonLog.RemovedStaleSocket(logger, paths.Socket);
            }

            DaemonLog.StoreOpened(logger, store.Path, store.SchemaVersion);
            app.Lifetime.ApplicationStopping.Register(() => DaemonLog.Stopping(logger));
            var built = clock.Elapsed;
            // Reconcile before serving: containers take their state from conmon's exit files, half-made ones are undone.
            var (kept, rolledBack) = await app.Services.GetRequiredService<ContainerService>().RecoverAsync(ct).ConfigureAwait(false);
            rolledBack += await app.Services.GetRequiredService<SandboxService>().RecoverAsync(ct).ConfigureAwait(false);
            rolledBack += app.Services.GetRequiredService<RestoreService>().SweepStaging();
            app.Services.GetRequiredService<RestoreService>().DropSharedCriuConfig();
            rolledBack += app.Services.GetRequiredService<PodCheckpointService>().SweepInterrupted();
            // A migration cut by a restart is over: its source was resumed by container recovery above.
            rolledBack += app.Services.GetRequiredService<MigrationService>().SweepArchives();
            rolledBack += await app.Services.GetRequiredService<MigrationNetworkLock>().SweepAsync(ct).ConfigureAwait(false);
            rolledBack += await app.Services.GetRequiredService<PodRestoreService>().SweepInterruptedAsync(ct).ConfigureAwait(false);
            await app.Services.GetRequiredService<PodRestoreHolds>().ReleaseAllAsync(ct).ConfigureAwait(false);
            // After container recovery (a rolled-back container releases its image lease): a pull or an image GC cut short
            // left blobs and snapshots no image references, which nothing else would collect until some image is removed.
            await app.Services.GetRequiredService<ImageService>().CollectGarbageAsync(ct).ConfigureAwait(false);
            if (kept + rolledBack > 0)
            {
                DaemonLog.Recovered(logger, kept, rolledBack);
            }

            var recovered = clock.Elapsed;
            await app.StartAsync(ct).ConfigureAwait(false);
            started = app;
            using var self = System.Diagnostics.Process.GetCurrentProcess();
            DaemonLog.StartPhases(logger, (long)(DateTime.Now - self.StartTime).TotalMilliseconds, clock.ElapsedMilliseconds, hostConfigured.TotalMilliseconds, (storeOpened - hostConfigured).TotalMilliseconds,
                (servicesAdded - storeOpened).TotalMilliseconds, (built - servicesAdded).TotalMilliseconds, (recovered - built).TotalMilliseconds,
                (clock.Elapsed - recovered).TotalMilliseconds);
            // Only root and the socket's group may talk CRI: the API can run anything on the node.
            File.SetUnixFileMode(paths.Socket, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite);
            DaemonLog.Serving(logger, CriRuntimeService.CrestVersion, paths.Socket, paths.Root, paths.State, config.SourceFile ?? "(defaults)");
            DaemonLog.StreamingServing(logger, streaming.BaseUrl());
            await LogConditionsAsync(app.Services.GetRequiredService<NodeStatusService>(), logger, ct).ConfigureAwait(false);
            return new CrestDaemon(app, daemonLock, config, logger);
        }
        catch
        {
            // Nothing of a failed start may keep serving: stop Kestrel, drop the socket, then the locks.
            if (started is not null)
            {
                await started.StopAsync(CancellationToken.None).ConfigureAwait(false);
                await started.DisposeAsync().ConfigureAwait(false);
                TryDeleteSocket(paths.Socket);
            }

            daemonLock.Dispose();
            throw;
        }
    }

    public async Task StopAsync(CancellationToken ct)
    {
        await _app.StopAsync(ct).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync(CancellationToken.None).ConfigureAwait(false);
        // The store is registered as an instance, which the container does not dispose: its pooled connections go here.
        var store = _app.Services.GetService<MetadataStore>();
        await _app.DisposeAsync().ConfigureAwait(false);
        store?.Dispose();
        TryDeleteSocket(Config.Paths.Socket);
        DaemonLog.Stopped(_logger);
        _lock.Dispose();
    }

    private static void TryDeleteSocket(string path)
    {
        try
        {
            if (Linux.FileKinds.IsSocket(path))
            {
                File.Delete(path);
            }
        }
        catch (IOException)
        {
        }
    }

    private static async Task LogConditionsAsync(NodeStatusService status, ILogger logger, CancellationToken ct)
    {
        NodeStatus node;
        try
        {
            node = await status.GetAsync(ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // A broken probe is reported by Status; it must not stop the daemon from serving.
            DaemonLog.ConditionFalse(logger, "Status", "ProbeFailed", e.Message);
            return;
        }

        foreach (var c in node.Conditions.Where(c => !c.Status))
        {
            DaemonLog.ConditionFalse(logger, c.Type, c.Reason, c.Message);
        }
    }

    /// <summary>
    /// The systemd unit running crestd, or null: systemd sets INVOCATION_ID for every service it starts, and the unit is
    /// the last ".service" in crestd's cgroup path.
    /// </summary>
    private static string? SystemdUnit()
    {
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable("INVOCATION_ID")))
        {
            return null;
        }

        try
        {
            return File.ReadLines("/proc/self/cgroup").SelectMany(l => l.Split('/')).LastOrDefault(p => p.EndsWith(".service", StringComparison.Ordinal)) ?? "(a systemd service)";
        }
        catch (IOException)
        {
            return "(a systemd service)";
        }
    }

    private static LogLevel ParseLevel(string level) => Enum.TryParse<LogLevel>(level, ignoreCase: true, out var l) ? l : LogLevel.Information;
}
