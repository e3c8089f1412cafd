using Crest.Core;
using Crest.Criu.Api;
using Crest.Linux;
using Google.Protobuf;

namespace Crest.Checkpoint;

/// <summary>
/// Asks CRIU for its version over its RPC protocol: <c>criu swrk FD</c> with a SOCK_SEQPACKET socket,
/// one <c>criu_req{type: VERSION}</c>, one <c>criu_resp</c>. The answer is cached until the binary changes,
/// because the kubelet calls Status every few seconds.
/// </summary>
public sealed class CriuSwrkProbe(string criuPath, int minimumVersion, TimeProvider time) : ICriuProbe
{
    private static readonly TimeSpan AnswerTimeout = TimeSpan.FromSeconds(10);
    private readonly Lock _gate = new();
    private (string Path, DateTime Modified, long Size, CriuInfo Info)? _cached;

    public async Task<CriuInfo> ProbeAsync(CancellationToken ct)
    {
        var resolved = ExecutableSearch.Resolve(criuPath);
        if (resolved is null)
        {
            return new CriuInfo(criuPath, null, 0,
                $"CRIU binary '{criuPath}' was not found on PATH; install criu >= {CriuVersion.Format(minimumVersion)} (make deps) or set [checkpoint] criu_path");
        }

        var file = new FileInfo(resolved);
        lock (_gate)
        {
            if (_cached is { } c && c.Path == resolved && c.Modified == file.LastWriteTimeUtc && c.Size == file.Length)
            {
                return c.Info;
            }
        }

        var info = await AskVersionAsync(resolved, ct).ConfigureAwait(false);
        if (info.Version is not null)
        {
            info = info with { Features = await AskFeaturesAsync(resolved, ct).ConfigureAwait(false) };
        }

        // Only an answer is cached: a failed probe (a timeout, a crash) is asked again next time.
        if (info.Version is not null)
        {
            lock (_gate)
            {
                _cached = (resolved, file.LastWriteTimeUtc, file.Length, info);
            }
        }

        return info;
    }

    private async Task<CriuInfo> AskVersionAsync(string path, CancellationToken ct)
    {
        var (response, problem) = await AskAsync(path, new criu_req { Type = criu_req_type.Version }, "VERSION", ct).ConfigureAwait(false);
        if (response is null)
        {
            return new CriuInfo(path, null, 0, problem);
        }

        if (!response.Success || response.Version is null)
        {
            return new CriuInfo(path, null, 0, $"CRIU at {path} refused a VERSION request (errno {response.CrErrno}: {response.CrErrmsg})");
        }

        var v = response.Version;
        var number = CriuVersion.Number(v.MajorNumber, v.MinorNumber, v.Sublevel, v.HasGitid && v.Gitid.Length > 0);
        var text = $"{v.MajorNumber}.{v.MinorNumber}" + (v.Sublevel > 0 ? $".{v.Sublevel}" : "");
        var tooOld = number < minimumVersion
            ? $"CRIU {text} at {path} is too old: Crest needs CRIU >= {CriuVersion.Format(minimumVersion)} (older versions fail or hang on current kernels); install criu from Debian forky (make deps)"
            : null;
        return new CriuInfo(path, text, number, tooOld);
    }

    /// <summary>
    /// CRIU's FEATURE_CHECK for memory tracking and lazy pages: the kernel checks <c>criu check --feature
    /// mem_dirty_track</c> and <c>uffd-noncoop</c> run. A feature CRIU cannot confirm counts as missing.
    /// </summary>
    private async Task<CriuFeatures> AskFeaturesAsync(string path, CancellationToken ct)
    {
        var request = new criu_req { Type = criu_req_type.FeatureCheck, Features = new criu_features { MemTrack = true, LazyPages = true } };
        var (response, _) = await AskAsync(path, request, "FEATURE_CHECK", ct).ConfigureAwait(false);
        var features = response?.Features;
        return new CriuFeatures(features is { HasMemTrack: true, MemTrack: true }, features is { HasLazyPages: true, LazyPages: true }, PipeLimits.PageServerProblem());
    }

    /// <summary>One request over a fresh <c>criu swrk</c>; the answer, or null and what went wrong.</summary>
    private async Task<(criu_resp? Response, string Problem)> AskAsync(string path, criu_req request, string what, CancellationToken ct)
    {
        using var socket = new SeqPacketPair();
        const int ChildSocketFd = 3;
        ChildProcess child;
        try
        {
            child = ChildProcess.Spawn(path, [path, "swrk", ChildSocketFd.ToString(System.Globalization.CultureInfo.InvariantCulture)],
                [ChildFd.Null(0), ChildFd.Null(1), ChildFd.Null(2), new ChildFd(ChildSocketFd, socket.RemoteFd)]);
        }
        catch (IOException e)
        {
            return (null, $"CRIU at {path} could not be started: {e.Message}");
        }

        socket.CloseRemote();
        try
        {
            socket.Send(request.ToByteArray());
            var answer = await Task.Run(() => socket.Receive(64 * 1024, time.GetUtcNow() + AnswerTimeout, time), ct).WaitAsync(ct).ConfigureAwait(false);
            return answer is null ? (null, $"CRIU at {path} closed its RPC socket without answering a {what} request") : (criu_resp.Parser.ParseFrom(answer), "");
        }
        catch (Exception e) when (e is IOException or TimeoutException or InvalidProtocolBufferException)
        {
            return (null, $"CRIU at {path} did not answer a {what} request: {e.Message}");
        }
        finally
        {
            socket.Dispose();
            var exit = child.WaitAsync(CancellationToken.None);
            if (await Task.WhenAny(exit, Task.Delay(TimeSpan.FromSeconds(5), CancellationToken.None)).ConfigureAwait(false) != exit)
            {
                child.KillAndReap();
            }
        }
    }
}
