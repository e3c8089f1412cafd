using Crest.Core;
using Crest.Runtime;
using Microsoft.Extensions.Logging;

namespace Crest.Checkpoint;

/// <summary>
/// <c>nsenter --net=NETNS iptables -w -I|-D INPUT|OUTPUT -p tcp -m comment --comment crest-migration-lock -j DROP</c>:
/// one of the rules that keep a migration source's pod from sending or taking any TCP segment (ip6tables for IPv6).
/// </summary>
public sealed record MigrationLockRule(string NetnsPath, string Chain, bool Add, bool Ipv6)
{
    public const string Comment = "crest-migration-lock";

    public CommandLine ToCommandLine() => new("nsenter",
        ["--net=" + NetnsPath, Ipv6 ? "ip6tables" : "iptables", "-w", Add ? "-I" : "-D", Chain, "-p", "tcp", "-m", "comment", "--comment", Comment, "-j", "DROP"]);
}

/// <summary>
/// The source's network during a migration that moves established TCP connections. CRIU's dump with
/// <c>--leave-running</c> unlocks the connections it dumped, so the frozen source's kernel would go on acknowledging
/// what the peer sends (bytes the target never gets) and, when the source is killed, answer with a reset that ends
/// the connection the target has just restored. So from before the dump, every TCP segment in or out of the source
/// pod's network namespace is dropped: the peer retransmits until its traffic reaches the target. The lock is lifted
/// when the migration is undone (the source runs on); after a migration that succeeded it goes with the pod. A marker
/// in the pod's state directory names the locked container, so crestd's start (<see cref="SweepAsync"/>) lifts a lock
/// whose source its recovery resumed.
/// </summary>
public sealed class MigrationNetworkLock(ICommandRunner commands, SandboxService sandboxes, ContainerService containers, RuntimeLayout layout,
    ILogger<MigrationNetworkLock> logger)
{
    private static readonly string[] Chains = ["INPUT", "OUTPUT"];

    private string MarkerOf(string sandboxId) => Path.Combine(layout.SandboxDir(sandboxId), "migration-lock");

    /// <summary>
    /// Locks the pod network of <paramref name="container"/>. Refused while another container of the pod runs: the
    /// lock (and the address, which such a migration moves) are the whole pod's.
    /// </summary>
    public async Task LockAsync(ContainerRecord container, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(container);
        var sandbox = await sandboxes.GetAsync(container.SandboxId, ct).ConfigureAwait(false);
        var netns = NetnsOf(sandbox, $"container {container.Id} runs in pod sandbox {sandbox.Id}");
        var others = (await containers.ListAsync(ct).ConfigureAwait(false))
            .Where(c => c.SandboxId == sandbox.Id && c.Id != container.Id && c.State == ContainerState.Running).Select(c => c.Id).ToList();
        if (others.Count > 0)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"container {container.Id} shares pod sandbox {sandbox.Id} with running containers {string.Join(", ", others)}; moving its TCP connections moves the pod's address, "
                + "which they use too: stop them first, migrate the whole pod (crest migrate pod --keep-address), or migrate without keeping the address");
        }

        await LockNetnsAsync(sandbox, netns, container.Id, ct).ConfigureAwait(false);
        CheckpointLog.MigrationNetworkLocked(logger, container.Id, sandbox.Id);
    }

    /// <summary>
    /// Locks the network of a whole pod whose containers are all about to be frozen (a pod migration that keeps the
    /// address); returns the container the lock is recorded under (its first running one), for <see cref="UnlockAsync"/>.
    /// </summary>
    public async Task<string> LockPodAsync(string sandboxId, CancellationToken ct)
    {
        var sandbox = await sandboxes.GetAsync(sandboxId, ct).ConfigureAwait(false);
        var netns = NetnsOf(sandbox, $"pod sandbox {sandbox.Id}");
        var holder = (await containers.ListAsync(ct).ConfigureAwait(false))
            .Where(c => c.SandboxId == sandbox.Id && c.State == ContainerState.Running).Select(c => c.Id).Order(StringComparer.Ordinal).FirstOrDefault()
            ?? throw new CrestException(ErrorKind.FailedPrecondition, $"pod sandbox {sandbox.Id} runs no container; there are no TCP connections to move");
        await LockNetnsAsync(sandbox, netns, holder, ct).ConfigureAwait(false);
        CheckpointLog.MigrationNetworkLocked(logger, holder, sandbox.Id);
        return holder;
    }

    /// <summary>The pod's own network namespace; FailedPrecondition for a pod on the node's network.</summary>
    private static string NetnsOf(SandboxRecord sandbox, string what) =>
        sandbox.NetnsPath is { } netns && sandbox.Spec.Namespaces.Network != NamespaceMode.Node
            ? netns
            : throw new CrestException(ErrorKind.FailedPrecondition,
                $"{what}, which uses the node's network; only a pod with a network namespace of its own can move its address and TCP connections");

    /// <summary>
    /// Writes the marker naming <paramref name="holder"/>, then the drop rules; a failure takes back what was made. A pod
    /// locked already, or holding a container frozen for a migration, is refused before anything is written: that
    /// migration's lock must outlive this attempt (its copy may run elsewhere), and this one's undo would lift it.
    /// </summary>
    private async Task LockNetnsAsync(SandboxRecord sandbox, string netns, string holder, CancellationToken ct)
    {
        var held = (await containers.ListAsync(ct).ConfigureAwait(false)).Where(c => c.SandboxId == sandbox.Id && c.MigrationHold is not null).Select(c => c.Id).ToList();
        if (File.Exists(MarkerOf(sandbox.Id)) || held.Count > 0)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"pod sandbox {sandbox.Id} is locked for another migration" + (held.Count > 0 ? $" (containers {string.Join(", ", held)} held frozen for it)" : "")
                + "; end that migration first: crest resume its containers if their copy does not run elsewhere, or crest rm them if it does");
        }

        try
        {
            await File.WriteAllTextAsync(MarkerOf(sandbox.Id), holder, ct).ConfigureAwait(false);
            foreach (var chain in Chains)
            {
                await RunAsync(new MigrationLockRule(netns, chain, Add: true, Ipv6: false), required: true, ct).ConfigureAwait(false);
                await RunAsync(new MigrationLockRule(netns, chain, Add: true, Ipv6: true), required: false, ct).ConfigureAwait(false);
            }
        }
        catch
        {
            await UnlockNetnsAsync(netns).ConfigureAwait(false);
            File.Delete(MarkerOf(sandbox.Id));
            throw;
        }
    }

    /// <summary>
    /// Lifts the lock of the pod of <paramref name="idOrPrefix"/>, if there is one (the undo calls it whatever happened
    /// before; without the marker, written before the first rule, there is none and nothing runs).
    /// </summary>
    public async Task UnlockAsync(string idOrPrefix, CancellationToken ct)
    {
        var container = await containers.GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        var sandbox = await sandboxes.GetAsync(container.SandboxId, ct).ConfigureAwait(false);
        if (!File.Exists(MarkerOf(sandbox.Id)))
        {
            return;
        }

        if (sandbox.NetnsPath is { } netns && File.Exists(netns) && await UnlockNetnsAsync(netns).ConfigureAwait(false))
        {
            CheckpointLog.MigrationNetworkUnlocked(logger, container.Id, sandbox.Id);
        }

        File.Delete(MarkerOf(sandbox.Id));
    }

    /// <summary>
    /// At start, after container recovery, per locked pod: while any of its containers is still held frozen
    /// (<see cref="ContainerRecord.MigrationHold"/>) the lock stays (Resume lifts it, or the pod's removal); otherwise a
    /// pod with a container running again (recovery resumed a source that a restart cut off mid-migration) has it
    /// lifted. A pod whose containers are all gone or stopped keeps it: those sources were killed after their copy ran
    /// elsewhere, and the pod, which still holds the address, must not answer the peer.
    /// </summary>
    public async Task<int> SweepAsync(CancellationToken ct)
    {
        if (!Directory.Exists(layout.SandboxesDir))
        {
            return 0;
        }

        var lifted = 0;
        // One level: a pod's directory also holds its shm mount, which is not walked.
        foreach (var marker in Directory.EnumerateDirectories(layout.SandboxesDir).Select(d => MarkerOf(Path.GetFileName(d))).Where(File.Exists))
        {
            var sandboxId = Path.GetFileName(Path.GetDirectoryName(marker))!;
            var pod = (await containers.ListAsync(ct).ConfigureAwait(false)).Where(c => c.SandboxId == sandboxId).ToList();
            // A source still held frozen keeps the lock: the migration may yet kill it, and its sockets must not reset the peer.
            if (pod.Any(c => c.MigrationHold is not null) || pod.FirstOrDefault(c => c.State == ContainerState.Running) is not { } running)
            {
                continue;
            }

            await UnlockAsync(running.Id, ct).ConfigureAwait(false);
            lifted++;
        }

        return lifted;
    }

    /// <summary>Deletes every lock rule; true when one was there.</summary>
    private async Task<bool> UnlockNetnsAsync(string netns)
    {
        var removed = false;
        foreach (var chain in Chains)
        {
            foreach (var ipv6 in new[] { false, true })
            {
                // Inserted once per lock; -D fails when none is left (a few rounds for locks a crash may have repeated).
                for (var round = 0; round < 4 && await RunAsync(new MigrationLockRule(netns, chain, Add: false, ipv6), required: false, CancellationToken.None).ConfigureAwait(false); round++)
                {
                    removed = true;
                }
            }
        }

        return removed;
    }

    private async Task<bool> RunAsync(MigrationLockRule rule, bool required, CancellationToken ct)
    {
        var result = await commands.RunAsync(rule.ToCommandLine(), ct).ConfigureAwait(false);
        if (result.ExitCode == 0)
        {
            return true;
        }

        if (required)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"locking the TCP traffic of pod network {rule.NetnsPath} for the migration failed ({rule.ToCommandLine()}: {result.StandardError.Trim()}); the node needs iptables");
        }

        return false;
    }
}
