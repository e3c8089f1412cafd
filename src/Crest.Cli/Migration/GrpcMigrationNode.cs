using System.Runtime.CompilerServices;
using System.Text.Json;
using Crest.Api.V1;
using Google.Protobuf;
using Grpc.Core;
using Runtime.V1;

namespace Crest.Cli.Migration;

/// <summary>A crestd node over its socket: CRI runtime.v1 for pods and containers, crest.v1.CrestMigration for the rest.</summary>
internal sealed partial class GrpcMigrationNode(CriConnection connection) : IMigrationNode
{
    private readonly RuntimeService.RuntimeServiceClient _runtime = new(connection.Channel);
    private readonly ImageService.ImageServiceClient _images = new(connection.Channel);
    private readonly CrestMigration.CrestMigrationClient _migration = new(connection.Channel);

    public string Name => connection.Endpoint.ToString();

    public async Task<NodeCapabilities> CapabilitiesAsync(CancellationToken ct)
    {
        MigrationCapabilitiesResponse response;
        try
        {
            response = await CliRunner.CallAsync(connection, "crest.v1.CrestMigration/Capabilities", o => _migration.CapabilitiesAsync(new MigrationCapabilitiesRequest(), o).ResponseAsync, ct).ConfigureAwait(false);
        }
        catch (CliFailure e) when (e.ExitCode == ExitCodes.NotCri)
        {
            // containerd and CRI-O answer CRI but not Crest's own service.
            throw new CliFailure(ExitCodes.RuntimeError, $"{Name} does not serve crest.v1.CrestMigration: crest migrate needs crestd on both nodes ({e.Message})");
        }

        var problems = new Dictionary<MigrationStrategy, string?>();
        foreach (var s in response.Strategies)
        {
            if (s.Strategy is "stop-copy" or "post-copy" or "pre-copy")
            {
                problems[MigrationStrategies.Parse(s.Strategy)] = s.Supported ? null : s.Reason;
            }
        }

        return new NodeCapabilities(problems);
    }

    public async Task<SourceContainer> InspectAsync(string containerId, CancellationToken ct)
    {
        var status = (await CallAsync("ContainerStatus", o => _runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = containerId, Verbose = true }, o).ResponseAsync, ct).ConfigureAwait(false));
        var s = status.Status;
        if (s.State != ContainerState.ContainerRunning)
        {
            throw new CliFailure(ExitCodes.RuntimeError, $"container {s.Id} on {Name} is {s.State.ToString().ToUpperInvariant()}; only a running container can be migrated");
        }

        string podId = "";
        var privatePid = false;
        if (status.Info.TryGetValue("info", out var infoJson))
        {
            using var info = JsonDocument.Parse(infoJson);
            podId = info.RootElement.TryGetProperty("sandboxID", out var sb) ? sb.GetString() ?? "" : "";
            // A pid namespace of its own (no path to join): the kubelet's CONTAINER mode, which the restore must ask for again.
            if (info.RootElement.TryGetProperty("runtimeSpec", out var spec) && spec.ValueKind == JsonValueKind.Object
                && spec.TryGetProperty("linux", out var linux) && linux.TryGetProperty("namespaces", out var namespaces))
            {
                privatePid = namespaces.EnumerateArray().Any(n => n.GetProperty("type").GetString() == "pid" && !n.TryGetProperty("path", out _));
            }
        }

        var image = await CallAsync("ImageStatus", o => _images.ImageStatusAsync(new ImageStatusRequest { Image = new ImageSpec { Image = s.ImageRef } }, o).ResponseAsync, ct).ConfigureAwait(false);
        var digestRef = image.Image?.RepoDigests.FirstOrDefault();

        var logPath = Path.GetFileName(s.LogPath);
        IReadOnlyList<string> podIps = [];
        if (podId.Length > 0)
        {
            var pod = await CallAsync("PodSandboxStatus", o => _runtime.PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = podId, Verbose = true }, o).ResponseAsync, ct).ConfigureAwait(false);
            podIps = IpsOf(pod.Status);
            if (pod.Info.TryGetValue("info", out var podInfo))
            {
                using var doc = JsonDocument.Parse(podInfo);
                if (doc.RootElement.TryGetProperty("logDirectory", out var dir) && dir.GetString() is { Length: > 0 } logDir
                    && s.LogPath.StartsWith(logDir.TrimEnd('/') + "/", StringComparison.Ordinal))
                {
                    logPath = Path.GetRelativePath(logDir, s.LogPath);
                }
            }
        }

        return new SourceContainer(s.Id, s.Metadata?.Name ?? "migrated", podId, s.Image?.Image ?? s.ImageRef, digestRef, logPath, privatePid,
            s.Labels.ToDictionary(), s.Annotations.ToDictionary(), [.. s.Mounts])
        {
            PodIps = podIps,
        };
    }

    public async Task<IReadOnlyList<string>> PodIpsAsync(string podId, CancellationToken ct) =>
        IpsOf((await CallAsync("PodSandboxStatus", o => _runtime.PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = podId }, o).ResponseAsync, ct).ConfigureAwait(false)).Status);

    private static IReadOnlyList<string> IpsOf(PodSandboxStatus status) =>
        status.Network is not { } network || network.Ip.Length == 0 ? [] : [network.Ip, .. network.AdditionalIps.Select(a => a.Ip).Where(ip => ip.Length > 0)];

    public async Task<long> PullImageAsync(string image, CancellationToken ct)
    {
        var pulled = await CallAsync("PullImage", o => _images.PullImageAsync(new PullImageRequest { Image = new ImageSpec { Image = image } }, o).ResponseAsync, ct).ConfigureAwait(false);
        var status = await CallAsync("ImageStatus", o => _images.ImageStatusAsync(new ImageStatusRequest { Image = new ImageSpec { Image = pulled.ImageRef } }, o).ResponseAsync, ct).ConfigureAwait(false);
        return (long)(status.Image?.Size ?? 0);
    }

    public async Task CheckPodAsync(string podId, CancellationToken ct)
    {
        var pod = await CallAsync("PodSandboxStatus", o => _runtime.PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = podId }, o).ResponseAsync, ct).ConfigureAwait(false);
        if (pod.Status.State != PodSandboxState.SandboxReady)
        {
            throw new CliFailure(ExitCodes.RuntimeError, $"pod {podId} on {Name} is not ready; migrate into a ready pod or give --pod-config to make one");
        }
    }

    public async Task<string> RunPodAsync(PodSandboxConfig config, CancellationToken ct) =>
        (await CallAsync("RunPodSandbox", o => _runtime.RunPodSandboxAsync(new RunPodSandboxRequest { Config = config }, o).ResponseAsync, ct).ConfigureAwait(false)).PodSandboxId;

    public async Task RemovePodAsync(string podId, CancellationToken ct)
    {
        await CallAsync("StopPodSandbox", o => _runtime.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = podId }, o).ResponseAsync, ct).ConfigureAwait(false);
        await CallAsync("RemovePodSandbox", o => _runtime.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = podId }, o).ResponseAsync, ct).ConfigureAwait(false);
    }

    public async Task<PageClientIdentity> PreparePageClientAsync(CancellationToken ct)
    {
        var r = await CallAsync("crest.v1.CrestMigration/PreparePageClient", async o =>
        {
            try
            {
                return await _migration.PreparePageClientAsync(new PreparePageClientRequest(), o).ResponseAsync.ConfigureAwait(false);
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Unimplemented)
            {
                throw new CliFailure(ExitCodes.RuntimeError, $"{Name} cannot fetch post-copy memory over TLS (its crestd predates PreparePageClient); upgrade it, or migrate with --no-page-server-tls");
            }
        }, ct).ConfigureAwait(false);
        return new PageClientIdentity(r.IdentityToken, r.Certificate);
    }

    public async Task<FrozenSource> FreezeAsync(string containerId, long timeoutSeconds, string? pageServerAddress, bool tcpEstablished, string? rootfsRounds, string? pageClientCertificate, CancellationToken ct)
    {
        var r = await CallAsync("crest.v1.CrestMigration/Freeze", o => _migration.FreezeAsync(new FreezeRequest
        {
            ContainerId = containerId,
            Timeout = timeoutSeconds,
            PageServerAddress = pageServerAddress ?? "",
            TcpEstablished = tcpEstablished,
            RootfsRoundsToken = rootfsRounds ?? "",
            PageClientCertificate = pageClientCertificate ?? "",
        }, o).ResponseAsync, ct).ConfigureAwait(false);
        return new FrozenSource(r.ArchiveToken, r.ArchiveBytes, TimeSpan.FromMilliseconds(r.PausedMs))
        {
            PageServer = r.PageServer.Length > 0 ? r.PageServer : null,
            PageServerCertificate = r.PageServerCertificate.Length > 0 ? r.PageServerCertificate : null,
            RootfsEntries = r.RootfsEntries,
            RootfsBytes = r.RootfsBytes,
        };
    }

    public async Task<SourceRootfsRound> PrepareRootfsRoundAsync(string containerId, string? roundsToken, CancellationToken ct)
    {
        var r = await CallAsync("crest.v1.CrestMigration/PrepareRootfsRound",
            o => _migration.PrepareRootfsRoundAsync(new PrepareRootfsRoundRequest { ContainerId = containerId, RoundsToken = roundsToken ?? "" }, o).ResponseAsync, ct).ConfigureAwait(false);
        return new SourceRootfsRound(r.RoundsToken, r.Round, r.ArchiveToken, r.ArchiveBytes, r.Files, r.Bytes, r.Deleted);
    }

    public async Task<(string StagingToken, int Round, long Bytes)> WriteRootfsRoundAsync(string? stagingToken, IAsyncEnumerable<ReadOnlyMemory<byte>> chunks, ArchiveTrailer trailer, CancellationToken ct)
    {
        using var call = _migration.WriteRootfsRound(connection.CallOptions(ct));
        var first = true;
        await foreach (var chunk in chunks.WithCancellation(ct).ConfigureAwait(false))
        {
            var message = new RootfsRoundChunk { StagingToken = first ? stagingToken ?? "" : "", Data = ByteString.CopyFrom(chunk.Span) };
            first = false;
            await Explained("crest.v1.CrestMigration/WriteRootfsRound", () => call.RequestStream.WriteAsync(message, ct)).ConfigureAwait(false);
        }

        // The source's trailer, which the target checks what it received against; it (or, without one, an empty message)
        // names the staging when the round is empty.
        if (trailer.Sha256 is not null || first)
        {
            var last = new RootfsRoundChunk { StagingToken = first ? stagingToken ?? "" : "", Sha256 = trailer.Sha256 is { } sha ? ByteString.CopyFrom(sha) : ByteString.Empty };
            await Explained("crest.v1.CrestMigration/WriteRootfsRound", () => call.RequestStream.WriteAsync(last, ct)).ConfigureAwait(false);
        }

        await Explained("crest.v1.CrestMigration/WriteRootfsRound", () => call.RequestStream.CompleteAsync()).ConfigureAwait(false);
        var r = await Explained("crest.v1.CrestMigration/WriteRootfsRound", () => call.ResponseAsync).ConfigureAwait(false);
        return (r.StagingToken, r.Round, r.Bytes);
    }

    public Task DropRootfsRoundsAsync(string token, CancellationToken ct) =>
        CallAsync("crest.v1.CrestMigration/DropRootfsRounds", o => _migration.DropRootfsRoundsAsync(new DropRootfsRoundsRequest { Token = token }, o).ResponseAsync, ct);

    public async Task<LazyPagesProgress> LazyPagesAsync(string containerId, bool wait, CancellationToken ct)
    {
        var r = await CallAsync("crest.v1.CrestMigration/LazyPages", o => _migration.LazyPagesAsync(new LazyPagesRequest { ContainerId = containerId, Wait = wait }, o).ResponseAsync, ct).ConfigureAwait(false);
        return new LazyPagesProgress(r.Present, r.Finished, r.Succeeded, r.Pages, r.TotalPages, r.Problem.Length > 0 ? r.Problem : null);
    }

    public Task ResumeAsync(string containerId, CancellationToken ct) =>
        CallAsync("crest.v1.CrestMigration/Resume", o => _migration.ResumeAsync(new ResumeRequest { ContainerId = containerId }, o).ResponseAsync, ct);

    public Task KillFrozenAsync(string containerId, CancellationToken ct) =>
        CallAsync("crest.v1.CrestMigration/KillFrozen", o => _migration.KillFrozenAsync(new KillFrozenRequest { ContainerId = containerId }, o).ResponseAsync, ct);

    public async IAsyncEnumerable<ReadOnlyMemory<byte>> ReadArchiveAsync(string token, ArchiveTrailer trailer, [EnumeratorCancellation] CancellationToken ct)
    {
        using var call = _migration.ReadArchive(new ReadArchiveRequest { ArchiveToken = token }, connection.CallOptions(ct));
        using var digest = new Crest.Core.StreamDigest();
        while (await Explained("crest.v1.CrestMigration/ReadArchive", () => call.ResponseStream.MoveNext(ct)).ConfigureAwait(false))
        {
            var message = call.ResponseStream.Current;
            if (!message.Sha256.IsEmpty)
            {
                // The source's trailer: what arrived here must be what it made, before any of it counts as sent; it ends the stream.
                try
                {
                    digest.Verify(message.Sha256.Span, $"migration archive {token} read from {connection.Endpoint}");
                }
                catch (Crest.Core.CrestException e)
                {
                    throw new CliFailure(ExitCodes.RuntimeError, e.Message);
                }

                if (await Explained("crest.v1.CrestMigration/ReadArchive", () => call.ResponseStream.MoveNext(ct)).ConfigureAwait(false))
                {
                    throw new CliFailure(ExitCodes.RuntimeError, $"migration archive {token} read from {connection.Endpoint} has data after its SHA-256 trailer; the trailer ends the stream");
                }

                trailer.Sha256 = message.Sha256.ToByteArray();
                yield break;
            }

            digest.Append(message.Data.Span);
            yield return message.Data.Memory;
        }
    }

    public async Task<(string Token, string Path, long Bytes)> WriteArchiveAsync(IAsyncEnumerable<ReadOnlyMemory<byte>> chunks, bool unpack, ArchiveTrailer trailer, CancellationToken ct)
    {
        using var call = _migration.WriteArchive(connection.CallOptions(ct));
        var first = true;
        await foreach (var chunk in chunks.WithCancellation(ct).ConfigureAwait(false))
        {
            var message = new ArchiveChunk { Data = ByteString.CopyFrom(chunk.Span), Unpack = first && unpack };
            first = false;
            await Explained("crest.v1.CrestMigration/WriteArchive", () => call.RequestStream.WriteAsync(message, ct)).ConfigureAwait(false);
        }

        // The source's trailer, read and checked here: the target checks what it received against the digest the source
        // computed, so a change anywhere on the way, this client included, is caught there.
        if (trailer.Sha256 is { } sha)
        {
            var last = new ArchiveChunk { Sha256 = ByteString.CopyFrom(sha), Unpack = first && unpack };
            await Explained("crest.v1.CrestMigration/WriteArchive", () => call.RequestStream.WriteAsync(last, ct)).ConfigureAwait(false);
        }

        await Explained("crest.v1.CrestMigration/WriteArchive", () => call.RequestStream.CompleteAsync()).ConfigureAwait(false);
        var r = await Explained("crest.v1.CrestMigration/WriteArchive", () => call.ResponseAsync).ConfigureAwait(false);
        return (r.ArchiveToken, r.Path, r.Bytes);
    }

    public Task DropArchiveAsync(string token, CancellationToken ct) =>
        CallAsync("crest.v1.CrestMigration/DropArchive", o => _migration.DropArchiveAsync(new DropArchiveRequest { ArchiveToken = token }, o).ResponseAsync, ct);

    public async Task<(string ManifestDigest, long LayerBytes)> PublishArchiveAsync(string token, string image, CancellationToken ct)
    {
        var published = await CallAsync("crest.v1.CrestMigration/PublishArchive",
            o => _migration.PublishArchiveAsync(new PublishArchiveRequest { ArchiveToken = token, Image = image }, o).ResponseAsync, ct).ConfigureAwait(false);
        return (published.ManifestDigest, published.LayerBytes);
    }

    public async Task CheckPublishAsync(CancellationToken ct)
    {
        const string Rpc = "crest.v1.CrestMigration/PublishArchive";
        try
        {
            connection.CheckSocketExists();
            // An empty token names no checkpoint: a crestd that serves the RPC refuses it before anything else.
            await _migration.PublishArchiveAsync(new PublishArchiveRequest(), connection.CallOptions(ct)).ResponseAsync.ConfigureAwait(false);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.InvalidArgument && AnsweredByNode(e))
        {
            return;
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unimplemented)
        {
            throw new CliFailure(ExitCodes.RuntimeError, $"{Name} cannot push a checkpoint to a registry: its crestd predates crest migrate --via ({Rpc} is not served); upgrade it, or migrate without --via");
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && !AnsweredByNode(e))
        {
            throw Unavailable(Rpc, e);
        }
        catch (RpcException e)
        {
            throw connection.Explain(e, Rpc);
        }
        catch (CliFailure e) when (e.ExitCode == ExitCodes.Unreachable)
        {
            throw new NodeUnavailableException($"{Rpc} on {Name}: {e.Message}", e);
        }

        throw new CliFailure(ExitCodes.RuntimeError, $"{Name} answered {Rpc} for an empty archive token instead of refusing it; it is not a crestd this crest can drive");
    }

    public Task RemoveImageAsync(string image, CancellationToken ct) =>
        CallAsync("RemoveImage", o => _images.RemoveImageAsync(new RemoveImageRequest { Image = new ImageSpec { Image = image } }, o).ResponseAsync, ct);

    /// <summary>A post-copy restore's annotations: where the memory comes from and, over TLS, the two certificates' ends.</summary>
    private static void AddLazyPages(ContainerConfig config, LazyPagesSource lazyPages)
    {
        config.Annotations[Crest.Core.CriuRestoreOptions.LazyPagesFromAnnotation] = lazyPages.PageServer;
        if (lazyPages is { ServerCertificate: { } certificate, ClientIdentity: { } identity })
        {
            config.Annotations[Crest.Core.CriuRestoreOptions.PageServerCertificateAnnotation] = certificate;
            config.Annotations[Crest.Core.CriuRestoreOptions.PageClientIdentityAnnotation] = identity;
        }
    }

    public async Task<string> RestoreAsync(string podId, string archivePath, SourceContainer source, LazyPagesSource? lazyPages, string? rootfsStaging, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(source);
        var pod = await CallAsync("PodSandboxStatus", o => _runtime.PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = podId }, o).ResponseAsync, ct).ConfigureAwait(false);
        var sandboxConfig = new PodSandboxConfig { Metadata = pod.Status.Metadata };
        sandboxConfig.Labels.Add(pod.Status.Labels);
        sandboxConfig.Annotations.Add(pod.Status.Annotations);
        var config = ConfigOf(source, archivePath);
        if (lazyPages is not null)
        {
            AddLazyPages(config, lazyPages);
        }

        if (rootfsStaging is not null)
        {
            config.Annotations[Crest.Core.RestorePlan.RootfsStagingAnnotation] = rootfsStaging;
        }

        var created = await CallAsync("CreateContainer", o => _runtime.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = podId, Config = config, SandboxConfig = sandboxConfig }, o).ResponseAsync, ct).ConfigureAwait(false);
        try
        {
            await CallAsync("StartContainer", o => _runtime.StartContainerAsync(new StartContainerRequest { ContainerId = created.ContainerId }, o).ResponseAsync, ct).ConfigureAwait(false);
        }
        catch (CliFailure e)
        {
            // The orchestrator removes what it knows of; a container that failed to start is removed here. One whose
            // node went away meanwhile (NodeUnavailableException) may run there: the undo finds it by its label.
            await RemoveContainerAsync(created.ContainerId, CancellationToken.None).ConfigureAwait(false);
            throw new CliFailure(e.ExitCode, $"{e.Message} (container {created.ContainerId} on {Name} removed)");
        }

        return created.ContainerId;
    }

    /// <summary>The container config that recreates <paramref name="source"/> from <paramref name="image"/> (a checkpoint, or its base image).</summary>
    private static ContainerConfig ConfigOf(SourceContainer source, string image)
    {
        var config = new ContainerConfig
        {
            Metadata = new ContainerMetadata { Name = source.Name },
            Image = new ImageSpec { Image = image },
            LogPath = source.LogPath,
            Linux = new LinuxContainerConfig
            {
                SecurityContext = new LinuxContainerSecurityContext
                {
                    NamespaceOptions = new NamespaceOption { Pid = source.PrivatePidNamespace ? NamespaceMode.Container : NamespaceMode.Pod },
                },
            },
        };
        foreach (var (key, value) in source.Labels)
        {
            config.Labels[key] = value;
        }

        foreach (var (key, value) in source.Annotations)
        {
            config.Annotations[key] = value;
        }

        config.Mounts.Add(source.Mounts);
        return config;
    }

    public async Task<string> StateAsync(string containerId, CancellationToken ct)
    {
        var status = await CallAsync("ContainerStatus", o => _runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = containerId }, o).ResponseAsync, ct).ConfigureAwait(false);
        return status.Status.State switch
        {
            ContainerState.ContainerCreated => "CONTAINER_CREATED",
            ContainerState.ContainerRunning => "CONTAINER_RUNNING",
            ContainerState.ContainerExited => $"CONTAINER_EXITED ({status.Status.Reason} {status.Status.ExitCode}: {status.Status.Message})",
            _ => "CONTAINER_UNKNOWN",
        };
    }

    public async Task RemoveContainerAsync(string containerId, CancellationToken ct)
    {
        await CallAsync("StopContainer", o => _runtime.StopContainerAsync(new StopContainerRequest { ContainerId = containerId, Timeout = 0 }, o).ResponseAsync, ct).ConfigureAwait(false);
        await CallAsync("RemoveContainer", o => _runtime.RemoveContainerAsync(new RemoveContainerRequest { ContainerId = containerId }, o).ResponseAsync, ct).ConfigureAwait(false);
    }

    public async Task<(DateTimeOffset? Last, DateTimeOffset? FirstAfter)> LogTimesAsync(string containerId, DateTimeOffset? after, CancellationToken ct)
    {
        var r = await CallAsync("crest.v1.CrestMigration/LogTimes", o => _migration.LogTimesAsync(new LogTimesRequest
        {
            ContainerId = containerId,
            AfterUnixNanos = after is { } a ? (a.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks) * 100 : 0,
        }, o).ResponseAsync, ct).ConfigureAwait(false);
        return (FromNanos(r.LastLineUnixNanos), FromNanos(r.FirstLineAfterUnixNanos));
    }

    private static DateTimeOffset? FromNanos(long nanos) => nanos > 0 ? DateTimeOffset.UnixEpoch.AddTicks(nanos / 100) : null;

    public async Task<IReadOnlyList<string>> FindRestoredAsync(string migrationId, CancellationToken ct)
    {
        var filter = new ContainerFilter();
        filter.LabelSelector[MigrationLabels.MigrationId] = migrationId;
        var r = await CallAsync("ListContainers", o => _runtime.ListContainersAsync(new ListContainersRequest { Filter = filter }, o).ResponseAsync, ct).ConfigureAwait(false);
        return [.. r.Containers.Select(c => c.Id)];
    }

    /// <summary>One call; a node that does not answer (no socket, refused, or cut off) is <see cref="NodeUnavailableException"/>.</summary>
    private async Task<T> CallAsync<T>(string rpc, Func<CallOptions, Task<T>> call, CancellationToken ct)
    {
        try
        {
            connection.CheckSocketExists();
            return await call(connection.CallOptions(ct)).ConfigureAwait(false);
        }
        catch (CliFailure e) when (e.ExitCode == ExitCodes.Unreachable)
        {
            throw new NodeUnavailableException($"{rpc} on {Name}: {e.Message}", e);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && !AnsweredByNode(e))
        {
            throw Unavailable(rpc, e);
        }
        catch (RpcException e)
        {
            throw connection.Explain(e, rpc);
        }
    }

    /// <summary>
    /// crestd itself answers UNAVAILABLE for something it could not reach (a registry): the call failed, the node is there.
    /// crestd marks every failure it maps from a domain error with the trailer <see cref="ErrorKindTrailer"/>; a node that
    /// is gone (refused, killed, reset) answers no trailers at all.
    /// </summary>
    internal static bool AnsweredByNode(RpcException e) => e.Trailers.Get(ErrorKindTrailer) is not null;

    /// <summary>crestd's ErrorInterceptor.ErrorKindTrailer.</summary>
    internal const string ErrorKindTrailer = "crest-error-kind";

    private NodeUnavailableException Unavailable(string rpc, RpcException e) =>
        new($"{rpc} on {Name} got no answer, its crestd is down or restarting ({e.Status.Detail})", e);

    private async Task<T> Explained<T>(string rpc, Func<Task<T>> call)
    {
        try
        {
            return await call().ConfigureAwait(false);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && !AnsweredByNode(e))
        {
            throw Unavailable(rpc, e);
        }
        catch (RpcException e)
        {
            throw connection.Explain(e, rpc);
        }
    }

    private async Task Explained(string rpc, Func<Task> call)
    {
        try
        {
            await call().ConfigureAwait(false);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && !AnsweredByNode(e))
        {
            throw Unavailable(rpc, e);
        }
        catch (RpcException e)
        {
            throw connection.Explain(e, rpc);
        }
    }
}
