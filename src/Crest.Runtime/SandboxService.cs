using System.Security.Cryptography;
using System.Text.Json;
using Crest.Core;
using Crest.Linux;
using Crest.Oci;
using Microsoft.Extensions.Logging;

namespace Crest.Runtime;

/// <summary>
/// Pod sandboxes: a network namespace held by a bind-mounted nsfs file, the CNI network, the pod's
/// hostname/hosts/resolv.conf and /dev/shm, and an infra process (catatonit -P from the host, in an
/// empty rootfs, under conmon) that holds the pod's IPC, UTS and PID namespaces. The record is written
/// first (Creating); every later step is undone if a later one fails.
/// </summary>
public sealed partial class SandboxService(
    IRuntimeStore store,
    ILinux linux,
    IOciRuntimeFactory runtimes,
    INetwork cni,
    RuntimeLayout layout,
    UserNamespaces userNamespaces,
    ConmonExits exits,
    TimeProvider time,
    ILogger<SandboxService> logger)
{
    public const string CatatonitPath = "/usr/bin/catatonit";

    private readonly KeyedLock _locks = new();

    public async Task<SandboxRecord> RunAsync(PodSpec spec, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var runtime = runtimes.For(spec.RuntimeHandler);
        UserNamespaces.Validate(spec);
        if (spec.Namespaces.HasPodUserNamespace && userNamespaces.Problem is { } problem)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"pod {spec.Namespace}/{spec.Name} asks for a user namespace of its own, which this node cannot give: {problem}");
        }

        var name = $"{spec.Name}_{spec.Namespace}_{spec.Uid}_{spec.Attempt}";
        var id = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
        // The name check and the Creating record are one step, so two RunPodSandbox calls cannot both take a name.
        using (await _locks.AcquireAsync("names", ct).ConfigureAwait(false))
        {
            var existing = (await store.ListSandboxesAsync(ct).ConfigureAwait(false))
                .FirstOrDefault(s => $"{s.Spec.Name}_{s.Spec.Namespace}_{s.Spec.Uid}_{s.Spec.Attempt}" == name);
            if (existing is not null)
            {
                throw new CrestException(ErrorKind.AlreadyExists, $"pod sandbox name {name} is already used by {existing.Id}; remove it first or use another attempt");
            }

            await store.PutSandboxAsync(Creating(id, spec, runtime.Handler), ct).ConfigureAwait(false);
        }

        return await CreateAsync(id, spec, runtime, ct).ConfigureAwait(false);
    }

    private static SandboxRecord Creating(string id, PodSpec spec, RuntimeHandlerOptions handler) => new()
    {
        Id = id,
        Spec = spec,
        State = SandboxState.Creating,
        CreatedAt = DateTimeOffset.UtcNow,
        RuntimeHandler = handler.Name,
        CgroupsPath = spec.CgroupParent.Length == 0 ? "/crest" : "/" + spec.CgroupParent.Trim('/'),
    };

    private async Task<SandboxRecord> CreateAsync(string id, PodSpec spec, IOciRuntime runtime, CancellationToken ct)
    {
        var sandbox = Creating(id, spec, runtime.Handler) with { CreatedAt = time.GetUtcNow() };
        try
        {
            var bundle = layout.Sandbox(id);
            // In a user-namespaced pod the infra's empty rootfs, /dev/shm and the pod's files belong to the pod's root.
            (uint Uid, uint Gid)? podRoot = spec.Namespaces.HasPodUserNamespace ? spec.Namespaces.User!.HostRoot() : null;
            Directory.CreateDirectory(bundle.Rootfs);
            Directory.CreateDirectory(bundle.Shm);
            linux.Mount("shm", bundle.Shm, "tmpfs", MountOptions.NoSuid | MountOptions.NoDev | MountOptions.NoExec,
                "mode=1777,size=65536k" + (podRoot is { } shmOwner ? $",uid={shmOwner.Uid},gid={shmOwner.Gid}" : ""));
            if (podRoot is { } rootfsOwner)
            {
                // runc and crun make the infra's mount points from inside the user namespace.
                linux.Chown(bundle.Rootfs, rootfsOwner.Uid, rootfsOwner.Gid);
            }

            // A user-namespaced pod's network namespace is made by its infra (see SpecBuilder.ForInfra), so CNI comes after it.
            if (spec.Namespaces.Network != NamespaceMode.Node && podRoot is null)
            {
                var netns = bundle.NetnsFile;
                linux.CreateNetworkNamespace(netns);
                CrashPoints.Hit(CrashPoints.SandboxNetnsMade);
                sandbox = sandbox with { NetnsPath = netns };
                await store.PutSandboxAsync(sandbox, ct).ConfigureAwait(false);
                var attachment = await cni.AddAsync(id, netns, spec, ct).ConfigureAwait(false);
                CrashPoints.Hit(CrashPoints.SandboxCniAdded);
                sandbox = sandbox with { Ips = attachment.Ips, CniResult = attachment.Result, CniNetwork = attachment.Network, CniConfig = attachment.Config };
                await store.PutSandboxAsync(sandbox, ct).ConfigureAwait(false);
            }

            var hostname = SpecBuilder.PodHostname(spec, linux.HostName());
            if (podRoot is null)
            {
                WritePodFiles(bundle, spec, hostname, sandbox.Ips, owner: null);
            }

            Directory.CreateDirectory(bundle.BundleDir);
            var infraSpec = SpecBuilder.ForInfra(sandbox, bundle.Rootfs, CatatonitPath, bundle.Shm, hostname);
            await RuntimeSpecFile.WriteAsync(bundle.ConfigJson, infraSpec, ct).ConfigureAwait(false);
            var pid = await runtime.CreateAsync(ConmonCreateOptions.ForInfra(sandbox, bundle), ct).ConfigureAwait(false);
            await runtime.StartAsync(new RuncStartOptions { ContainerId = id }, ct).ConfigureAwait(false);
            CrashPoints.Hit(CrashPoints.SandboxInfraStarted);
            sandbox = sandbox with { InfraPid = pid };
            await store.PutSandboxAsync(sandbox, ct).ConfigureAwait(false);
            if (podRoot is { } owner)
            {
                if (spec.Namespaces.Network != NamespaceMode.Node)
                {
                    var netns = bundle.NetnsFile;
                    Directory.CreateDirectory(Path.GetDirectoryName(netns)!);
                    PinNamespace(pid, "net", netns);
                    sandbox = sandbox with { NetnsPath = netns };
                    await store.PutSandboxAsync(sandbox, ct).ConfigureAwait(false);
                    var attachment = await cni.AddAsync(id, netns, spec, ct).ConfigureAwait(false);
                    sandbox = sandbox with { Ips = attachment.Ips, CniResult = attachment.Result, CniNetwork = attachment.Network, CniConfig = attachment.Config };
                    await store.PutSandboxAsync(sandbox, ct).ConfigureAwait(false);
                }

                WritePodFiles(bundle, spec, hostname, sandbox.Ips, owner);
            }

            sandbox = sandbox with { State = SandboxState.Ready, PinnedNamespaces = PinNamespaces(bundle, pid, spec) };
            await store.PutSandboxAsync(sandbox, CancellationToken.None).ConfigureAwait(false);
            RuntimeLog.SandboxReady(logger, id, $"{spec.Namespace}/{spec.Name}", string.Join(",", sandbox.Ips));
            return sandbox;
        }
        catch (Exception e)
        {
            RuntimeLog.SandboxRollback(logger, id, e.Message);
            await TearDownAsync(sandbox, CancellationToken.None).ConfigureAwait(false);
            await store.DeleteSandboxAsync(id, CancellationToken.None).ConfigureAwait(false);
            throw;
        }
    }

    public async Task<SandboxRecord> GetAsync(string idOrPrefix, CancellationToken ct)
    {
        if (string.IsNullOrWhiteSpace(idOrPrefix))
        {
            throw new CrestException(ErrorKind.InvalidArgument, "a pod sandbox ID is required");
        }

        var all = await store.ListSandboxesAsync(ct).ConfigureAwait(false);
        var matches = all.Where(s => s.Id.StartsWith(idOrPrefix, StringComparison.Ordinal)).ToList();
        return matches.Count switch
        {
            1 => await RefreshAsync(matches[0], ct).ConfigureAwait(false)
                ?? throw new CrestException(ErrorKind.NotFound, $"pod sandbox {idOrPrefix} does not exist (it was removed meanwhile)"),
            0 => throw new CrestException(ErrorKind.NotFound, $"pod sandbox {idOrPrefix} does not exist"),
            _ => throw new CrestException(ErrorKind.InvalidArgument, $"pod sandbox ID prefix {idOrPrefix} is ambiguous: {matches.Count} sandboxes match"),
        };
    }

    public async Task<SandboxRecord?> FindAsync(string idOrPrefix, CancellationToken ct)
    {
        try
        {
            return await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        }
        catch (CrestException e) when (e.Kind == ErrorKind.NotFound)
        {
            return null;
        }
    }

    public async Task<IReadOnlyList<SandboxRecord>> ListAsync(CancellationToken ct)
    {
        var result = new List<SandboxRecord>();
        foreach (var s in await store.ListSandboxesAsync(ct).ConfigureAwait(false))
        {
            if (s.State != SandboxState.Creating && await RefreshAsync(s, ct).ConfigureAwait(false) is { } current)
            {
                result.Add(current);
            }
        }

        return result;
    }

    /// <summary>
    /// On start: sandboxes still Creating (crestd died mid-way) are torn down, their netns, CNI allocation and
    /// infra process included, so the kubelet's retry with the same name succeeds.
    /// </summary>
    public async Task<int> RecoverAsync(CancellationToken ct)
    {
        var rolledBack = 0;
        foreach (var s in await store.ListSandboxesAsync(ct).ConfigureAwait(false))
        {
            if (s.State != SandboxState.Creating)
            {
                continue;
            }

            await TearDownAsync(s with { NetnsPath = layout.NetnsFile(s.Id) }, ct).ConfigureAwait(false);
            await store.DeleteSandboxAsync(s.Id, ct).ConfigureAwait(false);
            rolledBack++;
        }

        return rolledBack;
    }

    /// <summary>Serialises operations on one sandbox (stop racing remove).</summary>
    public Task<IDisposable> LockAsync(string id, CancellationToken ct) => _locks.AcquireAsync(id, ct);

    /// <summary>Stops the infra process and tears the network down. Idempotent (CRI): a stopped pod stops again fine.</summary>
    public async Task StopAsync(SandboxRecord sandbox, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(sandbox);
        await runtimes.For(sandbox.RuntimeHandler).KillAsync(new RuncKillOptions { ContainerId = sandbox.Id, Signal = 9 }, ct).ConfigureAwait(false);
        await WaitGoneAsync(sandbox, TimeSpan.FromSeconds(10), ct).ConfigureAwait(false);
        if (sandbox.NetnsPath is { } netns && File.Exists(netns))
        {
            await cni.DelAsync(sandbox.Id, netns, sandbox.Spec, sandbox.CniResult, sandbox.CniConfig, ct).ConfigureAwait(false);
            CrashPoints.Hit(CrashPoints.PodStopNetworkDeleted);
            linux.RemoveNetworkNamespace(netns);
        }

        await store.PutSandboxAsync(sandbox with { State = SandboxState.NotReady }, ct).ConfigureAwait(false);
    }

    /// <summary>Removes a stopped sandbox's runtime state, mounts and files, then its record.</summary>
    public async Task RemoveAsync(SandboxRecord sandbox, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(sandbox);
        var failures = await TearDownAsync(sandbox, ct).ConfigureAwait(false);
        if (failures.Count > 0)
        {
            // Keep the record so the kubelet's retry (or a crest rmp) tries again rather than leaking an IP or a mount.
            await store.PutSandboxAsync(sandbox with { State = SandboxState.NotReady }, ct).ConfigureAwait(false);
            throw new CrestException(ErrorKind.Internal, $"pod sandbox {sandbox.Id} could not be removed completely; retry RemovePodSandbox: {string.Join("; ", failures)}");
        }

        await store.DeleteSandboxAsync(sandbox.Id, ct).ConfigureAwait(false);
    }

    /// <summary>Every path of a pod sandbox (containers bind its hostname, hosts, resolv.conf and shm).</summary>
    public SandboxBundle Bundle(string id) => layout.Sandbox(id);

    /// <summary>Why pods cannot have user namespaces of their own on this node, or null when they can (checked once).</summary>
    public string? UserNamespaceProblem => userNamespaces.Problem;

    /// <summary>A Ready sandbox whose infra process is gone is NotReady (the kubelet then recreates it).</summary>
    private async Task<SandboxRecord?> RefreshAsync(SandboxRecord s, CancellationToken ct)
    {
        // conmon writes the infra's exit file when it dies; a vanished pid covers a dead conmon.
        if (s.State == SandboxState.Ready && (File.Exists(layout.Sandbox(s.Id).ExitFile) || !linux.IsAlive(s.InfraPid)))
        {
            // Only if still Ready on record: a stop or removal racing this list keeps its result (no record comes back).
            var notReady = s with { State = SandboxState.NotReady };
            return await store.TryUpdateSandboxAsync(notReady, SandboxState.Ready, ct).ConfigureAwait(false)
                ? notReady
                : await store.GetSandboxAsync(s.Id, ct).ConfigureAwait(false);
        }

        return s;
    }

    /// <summary>Undoes everything a sandbox holds, step by step; returns what could not be undone (each step is still tried).</summary>
    private async Task<List<string>> TearDownAsync(SandboxRecord sandbox, CancellationToken ct)
    {
        var failures = new List<string>();
        // The record's handler, or the default one when the record's is no longer configured.
        var runtime = runtimes.TryFor(sandbox.RuntimeHandler) ?? runtimes.For("");
        if (InfraMayRun(sandbox))
        {
            // A stopped pod's infra is gone already (its exit recorded): no second kill.
            await Step(sandbox.Id, () => runtime.KillAsync(new RuncKillOptions { ContainerId = sandbox.Id, Signal = 9 }, ct)).ConfigureAwait(false);
            await Step(sandbox.Id, () => WaitGoneAsync(sandbox, TimeSpan.FromSeconds(10), ct)).ConfigureAwait(false);
        }

        await Step(sandbox.Id, () => runtime.DeleteAsync(new RuncDeleteOptions { ContainerId = sandbox.Id }, ct)).ConfigureAwait(false);
        if (sandbox.NetnsPath is { } netns && File.Exists(netns))
        {
            await Step(sandbox.Id, () => cni.DelAsync(sandbox.Id, netns, sandbox.Spec, sandbox.CniResult, sandbox.CniConfig, ct)).ConfigureAwait(false);
            await Step(sandbox.Id, () => { linux.RemoveNetworkNamespace(netns); return Task.CompletedTask; }).ConfigureAwait(false);
        }

        var bundle = layout.Sandbox(sandbox.Id);
        await Step(sandbox.Id, () => { linux.Unmount(bundle.Shm); return Task.CompletedTask; }).ConfigureAwait(false);
        foreach (var type in PinnedTypes)
        {
            // Unmounted by name, recorded or not: a crash may have come between the mount and the record.
            await Step(sandbox.Id, () => { linux.Unmount(bundle.PinnedNamespace(type)); return Task.CompletedTask; }).ConfigureAwait(false);
        }

        await Step(sandbox.Id, () =>
        {
            if (File.Exists(bundle.ExitFile))
            {
                File.Delete(bundle.ExitFile);
            }

            if (Directory.Exists(bundle.Dir))
            {
                Directory.Delete(bundle.Dir, recursive: true);
            }

            // conmon links the infra's bundle here too.
            ContainerBundles.DeleteAttachLink(Path.Combine(layout.SocketDir, sandbox.Id));
            return Task.CompletedTask;
        }).ConfigureAwait(false);
        return failures;

        async Task Step(string id, Func<Task> step)
        {
            try
            {
                await step().ConfigureAwait(false);
            }
            catch (Exception e) when (e is CrestException or IOException or UnauthorizedAccessException)
            {
                RuntimeLog.CleanupFailed(logger, id, e.Message);
                failures.Add(e.Message);
            }
        }
    }

    /// <summary>Whether the infra process may still run: conmon has recorded no exit for it and its pid is alive.</summary>
    private bool InfraMayRun(SandboxRecord sandbox) =>
        !File.Exists(layout.Sandbox(sandbox.Id).ExitFile) && (sandbox.InfraPid <= 0 || linux.IsAlive(sandbox.InfraPid));

    /// <summary>Waits (bounded) until the killed infra is gone: woken by conmon's exit file, not by polling the pid.</summary>
    private async Task WaitGoneAsync(SandboxRecord sandbox, TimeSpan timeout, CancellationToken ct)
    {
        var deadline = time.GetUtcNow() + timeout;
        while (sandbox.InfraPid > 0 && linux.IsAlive(sandbox.InfraPid) && time.GetUtcNow() < deadline)
        {
            // The exit file wakes this at once; the pid is looked at again now and then for an infra whose conmon died.
            if (await exits.WaitAsync(sandbox.Id, DeadMonitorCheck, ct).ConfigureAwait(false))
            {
                return;
            }
        }
    }

    /// <summary>How often a wait for a killed infra looks at its pid, in case its conmon is gone and writes no exit file.</summary>
    private static readonly TimeSpan DeadMonitorCheck = TimeSpan.FromMilliseconds(250);

    private static readonly string[] PinnedTypes = ["ipc", "uts", "pid", "user"];

    /// <summary>
    /// Bind-mounts the infra's namespaces onto files in the sandbox directory (as CRI-O's pinns does): a container
    /// then joins the pod's namespaces by file, never through a pid that a dead infra process could have left to
    /// someone else.
    /// </summary>
    private Dictionary<string, string> PinNamespaces(SandboxBundle bundle, int infraPid, PodSpec spec)
    {
        var pinned = new Dictionary<string, string>(StringComparer.Ordinal);
        Directory.CreateDirectory(bundle.NamespacesDir);
        foreach (var type in PinnedTypes)
        {
            if ((type == "pid" && spec.Namespaces.Pid == NamespaceMode.Node) || (type == "user" && !spec.Namespaces.HasPodUserNamespace))
            {
                continue;
            }

            var file = bundle.PinnedNamespace(type);
            PinNamespace(infraPid, type, file);
            pinned[type] = file;
        }

        return pinned;
    }

    private void PinNamespace(int pid, string type, string file)
    {
        using (File.Create(file))
        {
        }

        linux.Mount($"/proc/{pid}/ns/{type}", file, null, MountOptions.Bind, null);
    }

    private void WritePodFiles(SandboxBundle bundle, PodSpec spec, string hostname, IReadOnlyList<string> ips, (uint Uid, uint Gid)? owner)
    {
        File.WriteAllText(bundle.HostnameFile, hostname + "\n");
        // A host-network pod sees the node's names, as in containerd; others get their own addresses under the pod's host name.
        var hosts = spec.Namespaces.Network == NamespaceMode.Node && File.Exists("/etc/hosts")
            ? File.ReadAllText("/etc/hosts")
            : "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + string.Concat(ips.Select(ip => $"{ip}\t{hostname}\n"));
        File.WriteAllText(bundle.HostsFile, hosts);
        string resolv;
        if (spec.Dns is { } dns && (dns.Servers.Count > 0 || dns.Searches.Count > 0 || dns.Options.Count > 0))
        {
            resolv = string.Concat(dns.Servers.Select(s => $"nameserver {s}\n"))
                + (dns.Searches.Count > 0 ? $"search {string.Join(' ', dns.Searches)}\n" : "")
                + (dns.Options.Count > 0 ? $"options {string.Join(' ', dns.Options)}\n" : "");
        }
        else
        {
            resolv = File.Exists("/etc/resolv.conf") ? File.ReadAllText("/etc/resolv.conf") : "";
        }

        File.WriteAllText(bundle.ResolvConfFile, resolv);
        if (owner is { } o)
        {
            // Containers bind these files in; the pod's root may rewrite them, as it could outside a user namespace.
            foreach (var file in new[] { bundle.HostnameFile, bundle.HostsFile, bundle.ResolvConfFile })
            {
                linux.Chown(file, o.Uid, o.Gid);
            }
        }
    }
}
