using System.Text.Json;
using System.Text.Json.Serialization;
using Crest.Core;
using Crest.Linux;
using Crest.Runtime;
using Microsoft.Extensions.Logging;

namespace Crest.Checkpoint;

/// <summary>
/// <c>nsenter --net=NETNS iptables -w -I|-D INPUT -p tcp -m comment --comment crest-restore-hold -j DROP</c>: the rule
/// that holds a restored pod's TCP traffic (ip6tables for IPv6).
/// </summary>
public sealed record RestoreHoldRule(string NetnsPath, bool Add, bool Ipv6)
{
    public const string Comment = "crest-restore-hold";

    public CommandLine ToCommandLine() => new("nsenter",
        ["--net=" + NetnsPath, Ipv6 ? "ip6tables" : "iptables", "-w", Add ? "-I" : "-D", "INPUT", "-p", "tcp", "-m", "comment", "--comment", Comment, "-j", "DROP"]);
}

/// <summary>
/// A restored pod comes back as one: StartContainer restores one container at a time, and a container that ran before
/// its peers are back would change what they are restored against (a shared file's size, which CRIU checks; a packet
/// to a socket that is not there yet, answered with a reset that kills the connection). So while a multi-container pod
/// restore has containers still CREATED, each restored container is left stopped by CRIU (leave-stopped) and, when the
/// checkpoint holds established connections, every incoming TCP packet in the pod's network namespace is dropped (the
/// senders retransmit, as TCP does after a loss). When the last of them has run its restore (or failed to), or after
/// <see cref="Limit"/>, or at crestd's start, the rule goes and every restored container gets SIGCONT, together.
/// </summary>
public sealed class PodRestoreHolds(ICommandRunner commands, ILinux linux, RuntimeLayout layout, TimeProvider time, ILogger<PodRestoreHolds> logger) : IDisposable
{
    /// <summary>The longest a hold lasts when the caller never starts every container.</summary>
    public static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);

    private readonly SemaphoreSlim _gate = new(1, 1);

    public void Dispose() => _gate.Dispose();

    /// <summary>One restored container of a held pod, and its cgroup (as given to the runtime), whose processes are continued.</summary>
    public sealed record HeldContainer(string Id, string CgroupsPath);

    internal sealed record Hold(string? NetnsPath, List<HeldContainer> Containers, List<string> Pending);

    private string FileOf(string sandboxId) => Path.Combine(layout.SandboxDir(sandboxId), "restore-hold.json");

    /// <summary>
    /// Holds the restored pod until every container in <paramref name="containers"/> has left CREATED; its TCP traffic
    /// too when <paramref name="holdNetwork"/> (the checkpoint holds established connections).
    /// </summary>
    public async Task HoldAsync(SandboxRecord sandbox, IReadOnlyList<HeldContainer> containers, bool holdNetwork, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(sandbox);
        ArgumentNullException.ThrowIfNull(containers);
        if (containers.Count == 0)
        {
            return;
        }

        var netns = holdNetwork ? sandbox.NetnsPath : null;
        await _gate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            await File.WriteAllBytesAsync(FileOf(sandbox.Id), JsonSerializer.SerializeToUtf8Bytes(new Hold(netns, [.. containers], [.. containers.Select(c => c.Id)]), PodRestoreHoldJson.Default.Hold), ct).ConfigureAwait(false);
            if (netns is not null)
            {
                await RunAsync(new RestoreHoldRule(netns, Add: true, Ipv6: false), required: true, ct).ConfigureAwait(false);
                await RunAsync(new RestoreHoldRule(netns, Add: true, Ipv6: true), required: false, ct).ConfigureAwait(false);
            }
        }
        finally
        {
            _gate.Release();
        }

        CheckpointLog.PodHeld(logger, sandbox.Id, containers.Count, netns is not null);
        _ = ReleaseLaterAsync(sandbox.Id);
    }

    /// <summary>
    /// A restored container left CREATED (its restore ran, well or not): the last one releases the hold. One that CRIU
    /// left stopped (<paramref name="leftStopped"/>) while its pod is no longer held (the hold ran out, or crestd
    /// restarted in between) is continued at once.
    /// </summary>
    public async Task LeftCreatedAsync(SandboxRecord sandbox, string containerId, bool leftStopped, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(sandbox);
        var sandboxId = sandbox.Id;
        await _gate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (Read(sandboxId) is not { } hold)
            {
                if (leftStopped)
                {
                    Continue(sandboxId, new HeldContainer(containerId, Crest.Oci.SpecBuilder.CgroupsPathOf(sandbox, containerId)));
                }

                return;
            }

            hold.Pending.Remove(containerId);
            if (hold.Pending.Count > 0)
            {
                await File.WriteAllBytesAsync(FileOf(sandboxId), JsonSerializer.SerializeToUtf8Bytes(hold, PodRestoreHoldJson.Default.Hold), ct).ConfigureAwait(false);
                return;
            }

            await ReleaseLockedAsync(sandboxId, hold, "every restored container was started").ConfigureAwait(false);
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>At start: holds a previous crestd left are released (the containers it was waiting for may never come).</summary>
    public async Task<int> ReleaseAllAsync(CancellationToken ct)
    {
        var root = layout.SandboxesDir;
        if (!Directory.Exists(root))
        {
            return 0;
        }

        var n = 0;
        foreach (var dir in Directory.EnumerateDirectories(root))
        {
            var id = Path.GetFileName(dir);
            await _gate.WaitAsync(ct).ConfigureAwait(false);
            try
            {
                if (Read(id) is { } hold)
                {
                    await ReleaseLockedAsync(id, hold, "crestd restarted").ConfigureAwait(false);
                    n++;
                }
            }
            finally
            {
                _gate.Release();
            }
        }

        return n;
    }

    private async Task ReleaseLaterAsync(string sandboxId)
    {
        try
        {
            await Task.Delay(Limit, time).ConfigureAwait(false);
            await _gate.WaitAsync().ConfigureAwait(false);
            try
            {
                if (Read(sandboxId) is { } hold)
                {
                    await ReleaseLockedAsync(sandboxId, hold, $"not every restored container was started within {Limit.TotalSeconds:0} s").ConfigureAwait(false);
                }
            }
            finally
            {
                _gate.Release();
            }
        }
        catch (Exception e) when (e is CrestException or IOException)
        {
            CheckpointLog.PodReleaseFailed(logger, sandboxId, e.Message);
        }
    }

    private async Task ReleaseLockedAsync(string sandboxId, Hold hold, string why)
    {
        // The namespace may be gone with its pod: then so is the rule.
        if (hold.NetnsPath is { } netns && File.Exists(netns))
        {
            await RunAsync(new RestoreHoldRule(netns, Add: false, Ipv6: false), required: false, CancellationToken.None).ConfigureAwait(false);
            await RunAsync(new RestoreHoldRule(netns, Add: false, Ipv6: true), required: false, CancellationToken.None).ConfigureAwait(false);
        }

        foreach (var c in hold.Containers)
        {
            Continue(sandboxId, c);
        }

        File.Delete(FileOf(sandboxId));
        CheckpointLog.PodReleased(logger, sandboxId, why);
    }

    /// <summary>
    /// SIGCONT to every process CRIU left stopped, not only each container's first one (`runc kill --all` reaches only
    /// that one when the container shares the pod's pid namespace). A container whose restore failed, or that was
    /// removed, has none left.
    /// </summary>
    private void Continue(string sandboxId, HeldContainer c)
    {
        var processes = linux.CgroupProcesses(c.CgroupsPath);
        foreach (var pid in processes)
        {
            linux.Kill(pid, 18);
        }

        CheckpointLog.PodContinued(logger, sandboxId, c.Id, processes.Count);
    }

    private Hold? Read(string sandboxId)
    {
        var file = FileOf(sandboxId);
        if (!FileKinds.IsRegularFile(file))
        {
            return null;
        }

        try
        {
            return JsonSerializer.Deserialize(File.ReadAllBytes(file), PodRestoreHoldJson.Default.Hold);
        }
        catch (JsonException)
        {
            return null;
        }
    }

    private async Task RunAsync(RestoreHoldRule rule, bool required, CancellationToken ct)
    {
        var result = await commands.RunAsync(rule.ToCommandLine(), ct).ConfigureAwait(false);
        if (result.ExitCode != 0 && required)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"holding the restored pod's TCP traffic failed ({rule.ToCommandLine()}): {result.StandardError.Trim()}; iptables must work in pod network namespaces (make deps installs it)");
        }
    }
}

[JsonSerializable(typeof(PodRestoreHolds.Hold))]
internal sealed partial class PodRestoreHoldJson : JsonSerializerContext;
