using System.Text.Json;
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
/// Established TCP connections between the containers of a restored pod survive any start order. StartContainer
/// restores one container at a time; a packet from a restored container to a peer that is not restored yet would find
/// no socket and be answered with a reset, which kills the connection. So while a pod restored with its connections
/// has containers still CREATED, every incoming TCP packet in its network namespace is dropped (the senders retransmit,
/// as TCP does after a loss); the hold ends when the last of them has been started (or failed to), or after
/// <see cref="Limit"/>, whichever comes first, and at crestd's start.
/// </summary>
public sealed class RestoreNetworkHolds(ICommandRunner commands, RuntimeLayout layout, TimeProvider time, ILogger<RestoreNetworkHolds> logger) : IDisposable
{
    /// <summary>The longest a hold lasts when the caller never starts every container.</summary>
    public static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);

    private readonly SemaphoreSlim _gate = new(1, 1);

    public void Dispose() => _gate.Dispose();

    private sealed record Hold(string NetnsPath, List<string> Pending);

    private string FileOf(string sandboxId) => Path.Combine(layout.SandboxDir(sandboxId), "restore-hold.json");

    /// <summary>Holds the pod's TCP traffic until every container in <paramref name="pending"/> has left CREATED.</summary>
    public async Task HoldAsync(SandboxRecord sandbox, IReadOnlyList<string> pending, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(sandbox);
        if (sandbox.NetnsPath is not { } netns || pending.Count == 0)
        {
            return;
        }

        await _gate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            await File.WriteAllBytesAsync(FileOf(sandbox.Id), JsonSerializer.SerializeToUtf8Bytes(new Hold(netns, [.. pending])), ct).ConfigureAwait(false);
            await RunAsync(new RestoreHoldRule(netns, Add: true, Ipv6: false), required: true, ct).ConfigureAwait(false);
            await RunAsync(new RestoreHoldRule(netns, Add: true, Ipv6: true), required: false, ct).ConfigureAwait(false);
        }
        finally
        {
            _gate.Release();
        }

        CheckpointLog.NetworkHeld(logger, sandbox.Id, pending.Count);
        _ = ReleaseLaterAsync(sandbox.Id);
    }

    /// <summary>A restored container left CREATED (its restore ran, well or not): the last one releases the hold.</summary>
    public async Task LeftCreatedAsync(string sandboxId, string containerId, CancellationToken ct)
    {
        await _gate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (Read(sandboxId) is not { } hold)
            {
                return;
            }

            hold.Pending.Remove(containerId);
            if (hold.Pending.Count > 0)
            {
                await File.WriteAllBytesAsync(FileOf(sandboxId), JsonSerializer.SerializeToUtf8Bytes(hold), ct).ConfigureAwait(false);
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
        var root = Path.GetDirectoryName(layout.SandboxDir("x"))!;
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
            CheckpointLog.NetworkReleaseFailed(logger, sandboxId, e.Message);
        }
    }

    private async Task ReleaseLockedAsync(string sandboxId, Hold hold, string why)
    {
        // The namespace may be gone with its pod: then so is the rule.
        if (File.Exists(hold.NetnsPath))
        {
            await RunAsync(new RestoreHoldRule(hold.NetnsPath, Add: false, Ipv6: false), required: false, CancellationToken.None).ConfigureAwait(false);
            await RunAsync(new RestoreHoldRule(hold.NetnsPath, Add: false, Ipv6: true), required: false, CancellationToken.None).ConfigureAwait(false);
        }

        File.Delete(FileOf(sandboxId));
        CheckpointLog.NetworkReleased(logger, sandboxId, why);
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
            return JsonSerializer.Deserialize<Hold>(File.ReadAllBytes(file));
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
