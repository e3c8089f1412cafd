using Microsoft.Extensions.Logging;

namespace Crest.Daemon;

/// <summary>crestd's log messages, source-generated, with stable event ids.</summary>
internal static partial class DaemonLog
{
    [LoggerMessage(1, LogLevel.Information, "crestd {Version} serving CRI v1 on {Socket} (root {Root}, state {State}, config {ConfigFile})")]
    public static partial void Serving(ILogger logger, string version, string socket, string root, string state, string configFile);

    [LoggerMessage(2, LogLevel.Warning, "removed a stale socket file {Socket} left by an earlier crestd")]
    public static partial void RemovedStaleSocket(ILogger logger, string socket);

    [LoggerMessage(3, LogLevel.Information, "metadata store {Path} at schema version {Version}")]
    public static partial void StoreOpened(ILogger logger, string path, int version);

    [LoggerMessage(4, LogLevel.Information, "crestd stopping")]
    public static partial void Stopping(ILogger logger);

    [LoggerMessage(5, LogLevel.Information, "crestd stopped")]
    public static partial void Stopped(ILogger logger);

    [LoggerMessage(6, LogLevel.Warning, "node condition {Type} is false: {Reason}: {Message}")]
    public static partial void ConditionFalse(ILogger logger, string type, string reason, string message);

    [LoggerMessage(7, LogLevel.Error, "{Method} failed with an unexpected error")]
    public static partial void UnexpectedRpcError(ILogger logger, Exception exception, string method);

    [LoggerMessage(9, LogLevel.Information, "recovered {Kept} containers from the store; rolled back {RolledBack} half-made ones")]
    public static partial void Recovered(ILogger logger, int kept, int rolledBack);

    [LoggerMessage(8, LogLevel.Debug, "{Method} failed: {Kind}: {Message}")]
    public static partial void RpcFailed(ILogger logger, string method, Crest.Core.ErrorKind kind, string message);

    [LoggerMessage(30, LogLevel.Information, "streaming {Verb} session for {Id} ({Protocol})")]
    public static partial void StreamSession(ILogger logger, string verb, string id, string protocol);

    [LoggerMessage(31, LogLevel.Debug, "streaming {Verb} session ended by the client: {Reason}")]
    public static partial void StreamSessionEnded(ILogger logger, string verb, string reason);

    [LoggerMessage(32, LogLevel.Warning, "port-forward into pod {SandboxId} port {Port} failed: {Reason}")]
    public static partial void PortForwardFailed(ILogger logger, string sandboxId, int port, string reason);

    [LoggerMessage(34, LogLevel.Information, "listening {SinceExec} ms after exec, {Total} ms after the daemon's start: host configured {Host:F1} ms, store opened {Store:F1} ms, services added {Services:F1} ms, host built {Build:F1} ms, recovery {Recovery:F1} ms, Kestrel started {Listen:F1} ms")]
    public static partial void StartPhases(ILogger logger, long sinceExec, long total, double host, double store, double services, double build, double recovery, double listen);

    [LoggerMessage(33, LogLevel.Information, "streaming server (exec, attach, port-forward) on {Url}")]
    public static partial void StreamingServing(ILogger logger, string url);
}
