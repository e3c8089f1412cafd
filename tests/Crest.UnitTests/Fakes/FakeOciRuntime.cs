using System.Globalization;
using Crest.Core;
using Crest.Runtime;

namespace Crest.UnitTests.Fakes;

/// <summary>
/// runc and conmon without processes: containers move through created, running, paused and stopped as runc's state
/// machine does, and what conmon would leave behind is written where crestd reads it (the conmon pid file, naming this
/// test process, and the exit file with 128 + signal when a container is killed). Every call is recorded as
/// "verb id"; <see cref="Failures"/> makes a verb ("checkpoint") or one container's verb ("checkpoint c2") fail as the real runtime's error would.
/// </summary>
/// <param name="exitDir">Where conmon's exit files go (the layout's exit dir).</param>
/// <param name="alive">The pids that exist (a recording ILinux's): created init pids join it, killed ones leave.</param>
/// <param name="handlers">The configured handlers; the first is the default.</param>
public sealed class FakeOciRuntimes(string exitDir, ISet<int>? alive = null, params string[] handlers) : IOciRuntimeFactory
{
    private readonly Lock _gate = new();
    private readonly Dictionary<string, (string Status, int Pid)> _containers = new(StringComparer.Ordinal);
    private readonly List<string> _calls = [];
    private int _nextPid = 40_000;

    /// <summary>A verb ("create", "start", "checkpoint", ...) that fails with this exception.</summary>
    public Dictionary<string, Exception> Failures { get; } = new(StringComparer.Ordinal);

    /// <summary>What conmon was asked to create, in order.</summary>
    public List<ConmonCreateOptions> Created { get; } = [];

    /// <summary>What the runtime was asked to restore, in order.</summary>
    public List<RuncRestoreOptions> Restored { get; } = [];

    /// <summary>Runs inside each restore, as CRIU would (to see the files it reads then).</summary>
    public Action<RuncRestoreOptions>? DuringRestore { get; set; }

    /// <summary>Every checkpoint asked for, in order.</summary>
    public List<RuncCheckpointOptions> Checkpointed { get; } = [];

    /// <summary>The page servers lazy checkpoints started (sleep processes standing in for runc and CRIU).</summary>
    public System.Collections.Concurrent.ConcurrentBag<LazyCheckpoint> PageServers { get; } = [];

    /// <summary>Runs inside each checkpoint, as CRIU would (to write its images, or see the files it reads then).</summary>
    public Action<RuncCheckpointOptions>? DuringCheckpoint { get; set; }

    /// <summary>
    /// The handlers' default CRIU configuration (<see cref="RuntimeHandlerOptions.CriuDefaultConfig"/>): by default a
    /// file that does not exist, so no test reads the host's /etc/criu.
    /// </summary>
    public string CriuDefaultConfig { get; set; } = Path.Combine(exitDir, "..", "no-criu-defaults.conf");

    /// <summary>What ExecSync returns; null makes every exec time out.</summary>
    public RuncExecResult? ExecResult { get; set; } = new(0, "", "", TimedOut: false);

    public IReadOnlyList<string> Calls
    {
        get
        {
            lock (_gate)
            {
                return [.. _calls];
            }
        }
    }

    public string? StatusOf(string id)
    {
        lock (_gate)
        {
            return _containers.TryGetValue(id, out var c) ? c.Status : null;
        }
    }

    /// <summary>Makes the runtime know a container, as if it had been created before crestd restarted.</summary>
    public void Know(string id, string status, int pid = 0)
    {
        lock (_gate)
        {
            _containers[id] = (status, pid);
        }
    }

    private string[] Handlers => handlers.Length == 0 ? ["runc"] : handlers;

    public IOciRuntime For(string handler) =>
        TryFor(handler) ?? throw new CrestException(ErrorKind.InvalidArgument, $"runtime handler \"{handler}\" is not configured; configured: {string.Join(", ", Handlers)}");

    public IOciRuntime? TryFor(string handler)
    {
        var wanted = string.IsNullOrEmpty(handler) ? Handlers[0] : handler;
        return Handlers.Contains(wanted) ? new Bound(this, new RuntimeHandlerOptions(wanted, "/usr/bin/" + wanted) { CriuDefaultConfig = CriuDefaultConfig }) : null;
    }

    private void Enter(string verb, string id)
    {
        lock (_gate)
        {
            _calls.Add($"{verb} {id}");
        }

        if (Failures.TryGetValue(verb, out var failure) || Failures.TryGetValue($"{verb} {id}", out failure))
        {
            throw failure;
        }
    }

    private void Require(string verb, string id, params string[] statuses)
    {
        lock (_gate)
        {
            if (!_containers.TryGetValue(id, out var c) || !statuses.Contains(c.Status))
            {
                throw new CrestException(ErrorKind.Internal, $"container {id}: runc {verb} failed: container is {(_containers.TryGetValue(id, out var x) ? x.Status : "not there")}");
            }
        }
    }

    /// <summary>A command that runc allows only <paramref name="from"/> some states, moving the container <paramref name="to"/> another (null: stays).</summary>
    private Task Transition(RuncCommand command, string? to, params string[] from)
    {
        Enter(command.Verb, command.ContainerId);
        Require(command.Verb, command.ContainerId, from);
        if (to is not null)
        {
            Set(command.ContainerId, to);
        }

        return Task.CompletedTask;
    }

    private void Set(string id, string status)
    {
        lock (_gate)
        {
            _containers[id] = (status, _containers.TryGetValue(id, out var c) ? c.Pid : 0);
        }
    }

    private sealed class Bound(FakeOciRuntimes runtimes, RuntimeHandlerOptions handler) : IOciRuntime
    {
        public RuntimeHandlerOptions Handler => handler;

        public Task<int> CreateAsync(ConmonCreateOptions options, CancellationToken ct)
        {
            runtimes.Enter("create", options.ContainerId);
            lock (runtimes._gate)
            {
                runtimes.Created.Add(options);
            }

            return Task.FromResult(runtimes.Monitor(options, "created"));
        }

        public Task<int> RestoreAsync(RuncRestoreOptions options, CancellationToken ct)
        {
            runtimes.Enter("restore", options.ContainerId);
            lock (runtimes._gate)
            {
                if (runtimes._containers.ContainsKey(options.ContainerId))
                {
                    throw new CrestException(ErrorKind.FailedPrecondition, $"container {options.ContainerId}: the OCI runtime could not create it: container with id exists");
                }

                runtimes.Restored.Add(options);
            }

            runtimes.DuringRestore?.Invoke(options);

            // CRIU puts the processes back running: there is no separate start.
            return Task.FromResult(runtimes.Monitor(options.Monitor, "running"));
        }

        public Task StartAsync(RuncStartOptions options, CancellationToken ct) => runtimes.Transition(options, "running", "created");

        public Task KillAsync(RuncKillOptions options, CancellationToken ct)
        {
            runtimes.Enter("kill", options.ContainerId);
            if (runtimes.StatusOf(options.ContainerId) is "created" or "running" or "paused")
            {
                runtimes.Set(options.ContainerId, "stopped");
                runtimes.Exited(options.ContainerId);
                // conmon records the exit as a shell would: 128 + the signal.
                Directory.CreateDirectory(runtimes.ExitDirectory);
                // As conmon does (g_file_set_contents): a temporary file renamed into place, so a reader never sees it half written.
                var exitFile = Path.Combine(runtimes.ExitDirectory, options.ContainerId);
                File.WriteAllText(exitFile + ".tmp", (128 + options.Signal).ToString(CultureInfo.InvariantCulture));
                File.Move(exitFile + ".tmp", exitFile, overwrite: true);
            }

            return Task.CompletedTask;
        }

        public Task DeleteAsync(RuncDeleteOptions options, CancellationToken ct)
        {
            runtimes.Enter("delete", options.ContainerId);
            lock (runtimes._gate)
            {
                runtimes._containers.Remove(options.ContainerId);
            }

            return Task.CompletedTask;
        }

        public Task<OciState?> StateAsync(RuncStateOptions options, CancellationToken ct)
        {
            runtimes.Enter("state", options.ContainerId);
            lock (runtimes._gate)
            {
                return Task.FromResult(runtimes._containers.TryGetValue(options.ContainerId, out var c) ? new OciState(c.Status, c.Pid) : null);
            }
        }

        public Task UpdateAsync(RuncUpdateOptions options, CancellationToken ct) => runtimes.Transition(options, null, "created", "running", "paused");

        public Task PauseAsync(RuncPauseOptions options, CancellationToken ct) => runtimes.Transition(options, "paused", "running");

        public Task ResumeAsync(RuncResumeOptions options, CancellationToken ct) => runtimes.Transition(options, "running", "paused");

        public Task CheckpointAsync(RuncCheckpointOptions options, CancellationToken ct)
        {
            ct.ThrowIfCancellationRequested();
            lock (runtimes._gate)
            {
                runtimes.Checkpointed.Add(options);
            }

            runtimes.DuringCheckpoint?.Invoke(options);
            return runtimes.Transition(options, null, "running", "paused");
        }

        /// <summary>A post-copy dump: the page server is a stand-in process in a session of its own that serves until it is killed.</summary>
        public Task<LazyCheckpoint> StartLazyCheckpointAsync(RuncCheckpointOptions options, CancellationToken ct)
        {
            ct.ThrowIfCancellationRequested();
            lock (runtimes._gate)
            {
                runtimes.Checkpointed.Add(options);
            }

            runtimes.DuringCheckpoint?.Invoke(options);
            runtimes.Enter("checkpoint", options.ContainerId);
            var server = Crest.Linux.ChildProcess.Spawn("/bin/sleep", ["sleep", "600"],
                [Crest.Linux.ChildFd.Null(0), Crest.Linux.ChildFd.Null(1), Crest.Linux.ChildFd.Null(2)], newSession: true);
            var lazy = new LazyCheckpoint(server, options.WorkPath, options.LazyPageServer!);
            runtimes.PageServers.Add(lazy);
            return Task.FromResult(lazy);
        }

        public Task<RuncExecResult> ExecAsync(RuncExecOptions options, TimeSpan timeout, CancellationToken ct)
        {
            runtimes.Enter("exec", options.ContainerId);
            runtimes.Require("exec", options.ContainerId, "running");
            return Task.FromResult(runtimes.ExecResult ?? new RuncExecResult(-1, "", "", TimedOut: true));
        }

        public IStreamSession StartExec(RuncExecOptions options, StreamOptions streams) =>
            throw new NotSupportedException("streaming sessions need a real runtime");

        public Task<IStreamSession> AttachAsync(ConmonAttachOptions options, CancellationToken ct) =>
            throw new NotSupportedException("attach needs a real conmon");
    }

    private string ExitDirectory => exitDir;

    /// <summary>What conmon leaves behind once the runtime has made the container: its pid file, and an init pid that is alive.</summary>
    private int Monitor(ConmonCreateOptions options, string status)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(options.ConmonPidFile)!);
        File.WriteAllText(options.ConmonPidFile, Environment.ProcessId.ToString(CultureInfo.InvariantCulture));
        int pid;
        lock (_gate)
        {
            pid = ++_nextPid;
            _containers[options.ContainerId] = (status, pid);
        }

        Started(pid);
        return pid;
    }

    private void Started(int pid)
    {
        if (alive is not null)
        {
            lock (alive)
            {
                alive.Add(pid);
            }
        }
    }

    private void Exited(string id)
    {
        int pid;
        lock (_gate)
        {
            pid = _containers[id].Pid;
        }

        if (alive is not null)
        {
            lock (alive)
            {
                alive.Remove(pid);
            }
        }
    }
}
