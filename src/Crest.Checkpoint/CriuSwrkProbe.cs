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
            return new CriuInfo(path, null, 0, $"CRIU at {path} could not be started: {e.Message}");
        }

        socket.CloseRemote();
        try
        {
            socket.Send(new criu_req { Type = criu_req_type.Version }.ToByteArray());
            var answer = await Task.Run(() => socket.Receive(64 * 1024, time.GetUtcNow() + AnswerTimeout, time), ct).WaitAsync(ct).ConfigureAwait(false);
            if (answer is null)
            {
                return new CriuInfo(path, null, 0, $"CRIU at {path} closed its RPC socket without answering a VERSION request");
            }

            var response = criu_resp.Parser.ParseFrom(answer);
            if (!response.Success || response.Version is null)
            {
                return new CriuInfo(path, null, 0, $"CRIU at {path} refused a VERSION request (errno {response.CrErrno}: {response.CrErrmsg})");
            }

            var v = response.Version;
            var number = CriuVersion.Number(v.MajorNumber, v.MinorNumber, v.Sublevel, v.HasGitid && v.Gitid.Length > 0);
            var text = $"{v.MajorNumber}.{v.MinorNumber}" + (v.Sublevel > 0 ? $".{v.Sublevel}" : "");
            var problem = number < minimumVersion
                ? $"CRIU {text} at {path} is too old: Crest needs CRIU >= {CriuVersion.Format(minimumVersion)} (older versions fail or hang on current kernels); install criu from Debian forky (make deps)"
                : null;
            return new CriuInfo(path, text, number, problem);
        }
        catch (Exception e) when (e is IOException or TimeoutException or InvalidProtocolBufferException)
        {
            return new CriuInfo(path, null, 0, $"CRIU at {path} did not answer a VERSION request: {e.Message}");
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
