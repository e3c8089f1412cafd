using Crest.Core;

namespace Crest.Runtime;

/// <summary>
/// How conmon should create one container or pod infra process: what is the process's own. What is the handler's or
/// the node's (runtime binary, its root, the exit and attach directories, the cgroup driver) the bound runtime adds,
/// in <see cref="ToArguments"/>, the one place conmon's argv is built (a restore adds its own words,
/// <see cref="RuncRestoreOptions.ConmonArguments"/>).
/// </summary>
public sealed record ConmonCreateOptions
{
    public required string ContainerId { get; init; }
    public required string Name { get; init; }
    public required string Bundle { get; init; }
    public required string ContainerPidFile { get; init; }
    public required string ConmonPidFile { get; init; }
    public required string PersistDir { get; init; }
    /// <summary>CRI log file (k8s-file format); empty for none.</summary>
    public string LogPath { get; init; } = "";
    public bool Terminal { get; init; }
    public bool Stdin { get; init; }

    /// <summary>A container's conmon: its name as the kubelet's, pid files and persist dir in the container's state dir.</summary>
    public static ConmonCreateOptions ForContainer(ContainerRecord c, SandboxRecord sandbox, ContainerBundle bundle)
    {
        ArgumentNullException.ThrowIfNull(c);
        ArgumentNullException.ThrowIfNull(sandbox);
        ArgumentNullException.ThrowIfNull(bundle);
        return new()
        {
            ContainerId = c.Id,
            Name = $"k8s_{c.Spec.Name}_{sandbox.Spec.Name}_{sandbox.Spec.Namespace}_{sandbox.Spec.Uid}_{c.Spec.Attempt}",
            Bundle = bundle.BundleDir,
            ContainerPidFile = bundle.PidFile,
            ConmonPidFile = bundle.ConmonPidFile,
            PersistDir = bundle.PersistDir,
            LogPath = c.LogFile,
            Terminal = c.Spec.Tty,
            Stdin = c.Spec.Stdin,
        };
    }

    /// <summary>The pod's infra process: named k8s_POD_..., pid files and persist dir in the sandbox's directory.</summary>
    public static ConmonCreateOptions ForInfra(SandboxRecord sandbox, SandboxBundle bundle)
    {
        ArgumentNullException.ThrowIfNull(sandbox);
        ArgumentNullException.ThrowIfNull(bundle);
        return new()
        {
            ContainerId = sandbox.Id,
            Name = $"k8s_POD_{sandbox.Spec.Name}_{sandbox.Spec.Namespace}_{sandbox.Spec.Uid}_{sandbox.Spec.Attempt}",
            Bundle = bundle.BundleDir,
            ContainerPidFile = bundle.InfraPidFile,
            ConmonPidFile = bundle.ConmonPidFile,
            PersistDir = bundle.PersistDir,
        };
    }

    public IReadOnlyList<string> ToArguments(string conmonPath, OciRuntimeBinding binding)
    {
        ArgumentNullException.ThrowIfNull(binding);
        var args = new List<string>
        {
            conmonPath, "--api-version", "1",
            "-c", ContainerId, "-u", ContainerId, "-n", Name,
            "-r", binding.RuntimePath, "-b", Bundle,
            "-p", ContainerPidFile, "-P", ConmonPidFile,
            "--exit-dir", binding.ExitDir, "--persist-dir", PersistDir, "--socket-dir-path", binding.SocketDir,
            "--runtime-arg", $"--root={binding.RuntimeRoot}",
            "-l", LogPath.Length > 0 ? $"k8s-file:{LogPath}" : "none:",
            "--log-level", "error",
        };
        if (Terminal)
        {
            args.Add("-t");
        }

        if (Stdin)
        {
            args.Add("-i");
        }

        if (binding.SystemdCgroup)
        {
            args.Add("-s");
        }

        return args;
    }
}

/// <summary>
/// What a runtime handler is bound to on this node: the runtime binary (resolved on PATH), its own <c>--root</c>, the
/// directories conmon shares across containers, and whether cgroups are systemd's (for containers and infra alike).
/// </summary>
public sealed record OciRuntimeBinding(
    RuntimeHandlerOptions Handler,
    string RuntimePath,
    string RuntimeRoot,
    string ConmonPath,
    string ExitDir,
    string SocketDir,
    bool SystemdCgroup);
