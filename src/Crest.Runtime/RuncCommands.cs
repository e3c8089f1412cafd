using System.Globalization;
using System.Text.Json;
using Crest.Core;
using Crest.Oci;

namespace Crest.Runtime;

/// <summary>
/// One runc/crun invocation on one container, typed (as youki's liboci-cli does): argv is built from it here and only
/// here, never by string concatenation at a call site. The bound runtime adds its own path and <c>--root</c>.
/// </summary>
public abstract record RuncCommand
{
    public required string ContainerId { get; init; }

    /// <summary>What the command does, for error messages ("kill 9", "checkpoint").</summary>
    public abstract string Verb { get; }

    /// <summary>Text for the runtime's standard input, for the commands that read one.</summary>
    public virtual string? StandardInput => null;

    /// <summary>argv after the runtime's path: the global <c>--root</c>, then the command's own words.</summary>
    public IReadOnlyList<string> Arguments(string runtimeRoot) => [$"--root={runtimeRoot}", .. CommandArguments()];

    /// <summary>The sub-command, its flags and the container id.</summary>
    protected abstract IEnumerable<string> CommandArguments();
}

/// <summary><c>runc start</c>: runs the user process of a created container.</summary>
public sealed record RuncStartOptions : RuncCommand
{
    public override string Verb => "start";

    protected override IEnumerable<string> CommandArguments() => ["start", ContainerId];
}

/// <summary><c>runc kill --all</c>: a signal to every process of the container.</summary>
public sealed record RuncKillOptions : RuncCommand
{
    public required int Signal { get; init; }

    public override string Verb => $"kill {Signal.ToString(CultureInfo.InvariantCulture)}";

    protected override IEnumerable<string> CommandArguments() => ["kill", "--all", ContainerId, Signal.ToString(CultureInfo.InvariantCulture)];
}

/// <summary>
/// <c>runc delete</c>: forgets a stopped container (its cgroups and state); with <see cref="Force"/>, kills what still runs
/// first. runc 1.2+ sleeps 100 ms after that kill even when nothing ran, so a force is only for a container still running.
/// </summary>
public sealed record RuncDeleteOptions : RuncCommand
{
    public bool Force { get; init; }

    public override string Verb => Force ? "delete --force" : "delete";

    protected override IEnumerable<string> CommandArguments() => Force ? ["delete", "--force", ContainerId] : ["delete", ContainerId];
}

/// <summary><c>runc state</c>: the runtime's view of the container (status and init pid).</summary>
public sealed record RuncStateOptions : RuncCommand
{
    public override string Verb => "state";

    protected override IEnumerable<string> CommandArguments() => ["state", ContainerId];
}

/// <summary><c>runc update --resources -</c>: new cgroup limits, read as JSON from standard input.</summary>
public sealed record RuncUpdateOptions : RuncCommand
{
    public required SpecResources Resources { get; init; }

    public override string Verb => "update";

    public override string StandardInput => JsonSerializer.Serialize(Resources, RuntimeSpecJson.Default.SpecResources);

    protected override IEnumerable<string> CommandArguments() => ["update", "--resources", "-", ContainerId];
}

/// <summary><c>runc pause</c>: freezes every process of the container (cgroup freezer).</summary>
public sealed record RuncPauseOptions : RuncCommand
{
    public override string Verb => "pause";

    protected override IEnumerable<string> CommandArguments() => ["pause", ContainerId];
}

/// <summary><c>runc resume</c>: thaws a paused container.</summary>
public sealed record RuncResumeOptions : RuncCommand
{
    public override string Verb => "resume";

    protected override IEnumerable<string> CommandArguments() => ["resume", ContainerId];
}

/// <summary><c>runc checkpoint</c>, always <c>--leave-running</c> (the CRI semantics).</summary>
public sealed record RuncCheckpointOptions : RuncCommand
{
    /// <summary>Where CRIU writes its images.</summary>
    public required string ImagePath { get; init; }
    /// <summary>Where CRIU writes dump.log and stats-dump.</summary>
    public required string WorkPath { get; init; }
    public bool FileLocks { get; init; } = true;
    public bool TcpEstablished { get; init; }

    /// <summary>
    /// Post-copy: memory is not written but served to a restore's <c>criu lazy-pages</c> from a page server listening at
    /// this <c>HOST:PORT</c> (<c>--lazy-pages --page-server</c>); CRIU runs until the other side disconnects.
    /// </summary>
    public string? LazyPageServer { get; init; }

    /// <summary>With <see cref="LazyPageServer"/>: the descriptor CRIU writes one byte to once the images are written and it serves pages.</summary>
    public int? StatusFd { get; init; }

    public override string Verb => LazyPageServer is null ? "checkpoint" : "checkpoint --lazy-pages";

    protected override IEnumerable<string> CommandArguments()
    {
        var args = new List<string> { "checkpoint", "--leave-running", "--image-path", ImagePath, "--work-path", WorkPath };
        if (FileLocks)
        {
            args.Add("--file-locks");
        }

        if (TcpEstablished)
        {
            args.Add("--tcp-established");
        }

        if (LazyPageServer is { } server)
        {
            args.AddRange(["--lazy-pages", "--page-server", server]);
            if (StatusFd is { } fd)
            {
                args.AddRange(["--status-fd", fd.ToString(CultureInfo.InvariantCulture)]);
            }
        }

        args.Add(ContainerId);
        return args;
    }
}

/// <summary>
/// <c>runc restore</c> of a container created from a checkpoint, run by conmon (<c>--restore</c>) so the restored
/// process gets the monitor, log and exit file a started one has. conmon itself adds <c>--detach --image-path IMAGES
/// --work-path BUNDLE</c> (so CRIU's restore.log lands in the bundle); the CRIU flags reach runc as <c>--runtime-opt</c>.
/// </summary>
public sealed record RuncRestoreOptions
{
    /// <summary>The monitor that runs the restore and then watches the process, as for a created container.</summary>
    public required ConmonCreateOptions Monitor { get; init; }
    /// <summary>The directory of CRIU's images of the checkpoint.</summary>
    public required string ImagePath { get; init; }
    public CriuRestoreOptions Criu { get; init; } = new();

    public string ContainerId => Monitor.ContainerId;

    /// <summary>The flags of <c>runc restore</c> that <see cref="Criu"/> becomes.</summary>
    public IReadOnlyList<string> RuntimeFlags()
    {
        var flags = new List<string>();
        if (Criu.FileLocks)
        {
            flags.Add("--file-locks");
        }

        if (Criu.TcpEstablished)
        {
            flags.Add("--tcp-established");
        }

        if (Criu.LazyPagesFrom is not null)
        {
            // CRIU connects to the lazy-pages daemon's socket in its work directory (the bundle), which Crest started first.
            flags.Add("--lazy-pages");
        }

        return flags;
    }

    /// <summary>What conmon is told beyond a create's arguments: where the images are, and each runc flag.</summary>
    public IReadOnlyList<string> ConmonArguments() => ["--restore", ImagePath, .. RuntimeFlags().SelectMany(flag => new[] { "--runtime-opt", flag })];
}

/// <summary>
/// How to run <c>runc exec</c> (or crun's) for ExecSync and streaming sessions. The process (command, user, groups,
/// capabilities, environment, terminal) is given whole in <see cref="ProcessFile"/>, taken from the container's own
/// config.json: a runtime's defaults for an exec differ (crun 1.8 runs it as root), Crest's do not.
/// </summary>
public sealed record RuncExecOptions : RuncCommand
{
    /// <summary>The OCI process (JSON) to run: <c>--process</c>.</summary>
    public required string ProcessFile { get; init; }
    /// <summary>Where runc writes the exec'd process's host pid, so it can be killed when the client goes away.</summary>
    public required string PidFile { get; init; }
    /// <summary>Whether the process has a terminal (it is in the process file too; the session needs to know).</summary>
    public bool Tty { get; init; }

    public override string Verb => "exec";

    protected override IEnumerable<string> CommandArguments() => ["exec", "--pid-file", PidFile, "--process", ProcessFile, ContainerId];
}

/// <summary>The outcome of an exec run to completion; <see cref="TimedOut"/> when its timeout killed it first.</summary>
public sealed record RuncExecResult(int ExitCode, string StandardOutput, string StandardError, bool TimedOut);

/// <summary>
/// <c>criu lazy-pages --page-server</c>: the target half of a post-copy restore. It listens on
/// <c>lazy-pages.socket</c> in <see cref="WorkPath"/> for the restoring CRIU, then fetches every page of the restored
/// processes from the source's page server into their memory through userfaultfd, on fault first and then the rest.
/// </summary>
public sealed record CriuLazyPagesOptions
{
    /// <summary>The checkpoint's images (the restore's image path).</summary>
    public required string ImagePath { get; init; }
    /// <summary>The restore's work path (conmon makes it the bundle): the socket and the log go there.</summary>
    public required string WorkPath { get; init; }
    public required string Address { get; init; }
    public required int Port { get; init; }
    public string LogFile { get; init; } = LazyPagesLog;

    /// <summary>The connection to the page server speaks TLS with these files (the source pinned this node's certificate).</summary>
    public PageTransferTls? Tls { get; init; }

    /// <summary>The daemon's log, in <see cref="WorkPath"/>.</summary>
    public const string LazyPagesLog = "lazy-pages.log";

    /// <summary>The socket the restoring CRIU connects to, in <see cref="WorkPath"/>.</summary>
    public const string Socket = "lazy-pages.socket";

    public IReadOnlyList<string> Arguments(string criuPath) =>
    [
        criuPath, "lazy-pages", "--page-server", "--address", Address, "--port", Port.ToString(CultureInfo.InvariantCulture),
        "--images-dir", ImagePath, "--work-dir", WorkPath, "--log-file", LogFile, "-v4", .. Tls?.Flags() ?? [],
    ];
}
