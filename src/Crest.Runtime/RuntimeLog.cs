using Microsoft.Extensions.Logging;

namespace Crest.Runtime;

internal static partial class RuntimeLog
{
    [LoggerMessage(200, LogLevel.Information, "pod sandbox {SandboxId} ({Pod}) ready with IPs {Ips}")]
    public static partial void SandboxReady(ILogger logger, string sandboxId, string pod, string ips);

    [LoggerMessage(201, LogLevel.Warning, "rolling back pod sandbox {SandboxId}: {Reason}")]
    public static partial void SandboxRollback(ILogger logger, string sandboxId, string reason);

    [LoggerMessage(202, LogLevel.Warning, "cleanup step for {Id} failed: {Reason}")]
    public static partial void CleanupFailed(ILogger logger, string id, string reason);

    [LoggerMessage(203, LogLevel.Information, "container {ContainerId} created in pod sandbox {SandboxId}")]
    public static partial void ContainerCreated(ILogger logger, string containerId, string sandboxId);

    [LoggerMessage(204, LogLevel.Information, "recovered {Sandboxes} pod sandboxes and {Containers} containers; rolled back {RolledBack} half-made objects")]
    public static partial void Recovered(ILogger logger, int sandboxes, int containers, int rolledBack);

    [LoggerMessage(205, LogLevel.Information, "restored container {ContainerId} successfully: pid {Pid} after {Milliseconds} ms")]
    public static partial void ContainerRestored(ILogger logger, string containerId, int pid, long milliseconds);

    [LoggerMessage(230, LogLevel.Warning, "user namespaces for pods are not available on this node: {Reason}")]
    public static partial void UserNamespacesUnavailable(ILogger logger, string reason);

    [LoggerMessage(231, LogLevel.Information, "user namespaces for pods are available (id-mapped mounts work under {Root})")]
    public static partial void UserNamespacesAvailable(ILogger logger, string root);

    [LoggerMessage(232, LogLevel.Warning, "resuming container {ContainerId} after its pod's dump failed: {Error}")]
    public static partial void ResumeAfterPodDumpFailed(ILogger logger, string containerId, string error);

    [LoggerMessage(234, LogLevel.Warning, "container {ContainerId} was being restored when crestd stopped; its process runs, so it is adopted as RUNNING")]
    public static partial void InterruptedRestoreAdopted(ILogger logger, string containerId);

    [LoggerMessage(235, LogLevel.Warning, "container {ContainerId} was being restored when crestd stopped and nothing of it runs; it is EXITED with StartError")]
    public static partial void InterruptedRestoreFailed(ILogger logger, string containerId);

    [LoggerMessage(233, LogLevel.Warning, "container {ContainerId} was left paused by a checkpoint that crestd did not finish; resumed it")]
    public static partial void ResumedAfterRestart(ILogger logger, string containerId);

    [LoggerMessage(236, LogLevel.Information, "container {ContainerId}: criu lazy-pages fetches its memory from the page server at {Address}:{Port}")]
    public static partial void LazyPagesStarted(ILogger logger, string containerId, string address, int port);

    [LoggerMessage(237, LogLevel.Information, "container {ContainerId}: post-copy finished, {Pages} of {Total} pages fetched")]
    public static partial void LazyPagesFinished(ILogger logger, string containerId, long pages, long total);

    [LoggerMessage(238, LogLevel.Error, "container {ContainerId}: criu lazy-pages ended with exit code {ExitCode} after {Pages} of {Total} pages; killing the restored container")]
    public static partial void LazyPagesFailed(ILogger logger, string containerId, int exitCode, long pages, long total);

    [LoggerMessage(239, LogLevel.Warning, "container {ContainerId}: cleaning up after criu lazy-pages failed: {Error}")]
    public static partial void LazyPagesCleanupFailed(ILogger logger, string containerId, string error);

    [LoggerMessage(240, LogLevel.Information, "container {ContainerId} is held frozen for a live migration since {Since:O}; it stays frozen until the migration resumes or kills it")]
    public static partial void MigrationHoldRecorded(ILogger logger, string containerId, DateTimeOffset since);

    [LoggerMessage(241, LogLevel.Information, "container {ContainerId}: the migration hold of {Since:O} ended ({How})")]
    public static partial void MigrationHoldEnded(ILogger logger, string containerId, DateTimeOffset since, string how);

    [LoggerMessage(242, LogLevel.Warning, "container {ContainerId} is held for a live migration since {Since:O} (runtime state {State}); kept frozen, not resumed (its copy may run on the target): the migration ends it, or crest resume / crest rm")]
    public static partial void MigrationHoldKept(ILogger logger, string containerId, DateTimeOffset since, string state);

    [LoggerMessage(244, LogLevel.Warning, "container {ContainerId}: killing the post-copy page server (runc pid {Pid}) an earlier crestd left serving")]
    public static partial void LeftoverPageServerKilled(ILogger logger, string containerId, int pid);

    [LoggerMessage(245, LogLevel.Warning, "container {ContainerId}: Nagle's algorithm stays on for its page server at {PageServer} ({Reason}); a transfer over TLS may wait 40 ms for a delayed ACK in its handshake")]
    public static partial void PageServerNagleKept(ILogger logger, string containerId, string pageServer, string reason);

    [LoggerMessage(246, LogLevel.Information, "container {ContainerId}: the freeze caught task(s) {Tasks} waiting in vfork for a child to exec, which CRIU cannot seize; thawed until the child ran on, frozen again (attempt {Attempt})")]
    public static partial void FrozenInVfork(ILogger logger, string containerId, string tasks, int attempt);
}
