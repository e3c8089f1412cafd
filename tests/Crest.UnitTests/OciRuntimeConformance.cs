using System.Globalization;
using Crest.Core;
using Crest.Runtime;
using Crest.TestKit;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>
/// The checks every <see cref="IOciRuntime"/> passes: the real one (conmon + runc, with runc played by
/// <see cref="ScriptedRunc"/>, so its argv and its reading of runc's answers are what is checked) and the fake.
/// </summary>
public abstract class OciRuntimeConformance : IDisposable
{
    protected TempDir Dir { get; } = new();

    /// <summary>A runtime that knows container <paramref name="id"/> in runc's <paramref name="status"/>.</summary>
    protected abstract IOciRuntime RuntimeWith(string id, string status);

    /// <summary>A runtime whose restore succeeds, or is refused with <paramref name="refusal"/> as the runtime's own error.</summary>
    protected abstract IOciRuntime RuntimeRestoring(string? refusal = null);

    /// <summary>A restore of container <paramref name="id"/> from CRIU images under the test directory.</summary>
    protected RuncRestoreOptions Restore(string id, bool tcpEstablished = false)
    {
        var bundle = new ContainerBundle(id, Dir.Combine("containers/" + id), Dir.Combine("state/" + id), Dir.Combine("exits/" + id), Dir.Combine("attach/" + id));
        return new RuncRestoreOptions
        {
            Monitor = ConmonCreateOptions.ForContainer(RuntimeStoreConformance.Container(id, "s1"), RuntimeStoreConformance.Sandbox("s1"), bundle),
            ImagePath = bundle.RestoreImages,
            Criu = new CriuRestoreOptions { TcpEstablished = tcpEstablished },
        };
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Start_makes_a_created_container_running()
    {
        var runtime = RuntimeWith("c1", "created");

        await runtime.StartAsync(new RuncStartOptions { ContainerId = "c1" }, Ct);

        Assert.Equal("running", (await runtime.StateAsync(new RuncStateOptions { ContainerId = "c1" }, Ct))?.Status);
    }

    [Fact]
    public async Task Start_of_a_container_the_runtime_does_not_know_fails_naming_it()
    {
        var runtime = RuntimeWith("c1", "created");

        var e = await Assert.ThrowsAsync<CrestException>(() => runtime.StartAsync(new RuncStartOptions { ContainerId = "c2" }, Ct));

        Assert.Contains("c2", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Kill_stops_a_running_container_and_killing_it_again_is_not_an_error()
    {
        var runtime = RuntimeWith("c1", "running");

        await runtime.KillAsync(new RuncKillOptions { ContainerId = "c1", Signal = 9 }, Ct);
        await runtime.KillAsync(new RuncKillOptions { ContainerId = "c1", Signal = 9 }, Ct);

        Assert.Equal("stopped", (await runtime.StateAsync(new RuncStateOptions { ContainerId = "c1" }, Ct))?.Status);
    }

    [Fact]
    public async Task Delete_forgets_a_container_and_deleting_an_unknown_one_is_not_an_error()
    {
        var runtime = RuntimeWith("c1", "stopped");

        await runtime.DeleteAsync(new RuncDeleteOptions { ContainerId = "c1" }, Ct);
        await runtime.DeleteAsync(new RuncDeleteOptions { ContainerId = "c1" }, Ct);

        Assert.Null(await runtime.StateAsync(new RuncStateOptions { ContainerId = "c1" }, Ct));
    }

    [Fact]
    public async Task Delete_forgets_a_container_that_still_runs()
    {
        var runtime = RuntimeWith("c1", "running");

        await runtime.DeleteAsync(new RuncDeleteOptions { ContainerId = "c1" }, Ct);

        Assert.Null(await runtime.StateAsync(new RuncStateOptions { ContainerId = "c1" }, Ct));
    }

    [Fact]
    public async Task Pause_then_resume_leaves_the_container_running()
    {
        var runtime = RuntimeWith("c1", "running");

        await runtime.PauseAsync(new RuncPauseOptions { ContainerId = "c1" }, Ct);
        Assert.Equal("paused", (await runtime.StateAsync(new RuncStateOptions { ContainerId = "c1" }, Ct))?.Status);
        await runtime.ResumeAsync(new RuncResumeOptions { ContainerId = "c1" }, Ct);

        Assert.Equal("running", (await runtime.StateAsync(new RuncStateOptions { ContainerId = "c1" }, Ct))?.Status);
    }

    [Fact]
    public async Task Resume_of_a_container_that_is_not_paused_fails()
    {
        var runtime = RuntimeWith("c1", "running");

        await Assert.ThrowsAsync<CrestException>(() => runtime.ResumeAsync(new RuncResumeOptions { ContainerId = "c1" }, Ct));
    }

    [Fact]
    public async Task A_checkpoint_leaves_the_container_running()
    {
        var runtime = RuntimeWith("c1", "running");

        await runtime.CheckpointAsync(new RuncCheckpointOptions { ContainerId = "c1", ImagePath = Dir.Combine("images"), WorkPath = Dir.Combine("work") }, Ct);

        Assert.Equal("running", (await runtime.StateAsync(new RuncStateOptions { ContainerId = "c1" }, Ct))?.Status);
    }

    [Fact]
    public async Task A_restore_returns_the_pid_of_the_restored_process()
    {
        var runtime = RuntimeRestoring();

        var pid = await runtime.RestoreAsync(Restore("c1"), Ct);

        Assert.True(pid > 0, $"pid {pid}");
    }

    [Fact]
    public async Task A_restore_the_runtime_refuses_fails_naming_the_container_and_the_runtimes_reason()
    {
        var runtime = RuntimeRestoring(refusal: "criu failed: type NS errno 0");

        var e = await Assert.ThrowsAsync<CrestException>(() => runtime.RestoreAsync(Restore("c1"), Ct));

        Assert.Contains("c1", e.Message, StringComparison.Ordinal);
        Assert.Contains("criu failed", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Update_of_a_stopped_container_fails_and_of_a_running_one_succeeds()
    {
        var running = RuntimeWith("c1", "running");
        await running.UpdateAsync(new RuncUpdateOptions { ContainerId = "c1", Resources = new Crest.Oci.SpecResources() }, Ct);

        var stopped = RuntimeWith("c2", "stopped");
        await Assert.ThrowsAsync<CrestException>(() => stopped.UpdateAsync(new RuncUpdateOptions { ContainerId = "c2", Resources = new Crest.Oci.SpecResources() }, Ct));
    }

    public void Dispose()
    {
        Dir.Dispose();
        GC.SuppressFinalize(this);
    }
}

public sealed class ConmonOciRuntimeTests : OciRuntimeConformance
{
    private readonly ScriptedRunc _runc = new();

    protected override IOciRuntime RuntimeWith(string id, string status)
    {
        _runc.Containers[id] = status;
        // runc keeps each container's state in <root>/<id>.
        _runc.Root = Dir.Combine("runtime/runc");
        Directory.CreateDirectory(Path.Combine(_runc.Root, id));
        return new ConmonOciRuntime(new OciRuntimeBinding(new RuntimeHandlerOptions("runc", "runc"), "/usr/bin/runc", _runc.Root, "conmon",
            Dir.Combine("exits"), Dir.Combine("attach"), SystemdCgroup: false), _runc, new RecordingLinux());
    }

    /// <summary>conmon played by a script: it writes its argv beside itself and answers on the sync pipe as conmon does.</summary>
    protected override IOciRuntime RuntimeRestoring(string? refusal = null)
    {
        var conmon = Dir.Combine("conmon");
        var answer = refusal is null ? """{"data": 4242}""" : $$"""{"data": -1, "message": "{{refusal}}"}""";
        File.WriteAllText(conmon, $"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{Dir.Combine("conmon.args")}'\nprintf '%s' '{answer}' >&3\n");
        File.SetUnixFileMode(conmon, (UnixFileMode)0x1ED);
        return new ConmonOciRuntime(new OciRuntimeBinding(new RuntimeHandlerOptions("runc", "runc"), "/usr/bin/runc", "/run/crest/runtime/runc", conmon,
            Dir.Combine("exits"), Dir.Combine("attach"), SystemdCgroup: false), _runc, new RecordingLinux());
    }

    /// <summary>Short, so a hang is found in seconds; long enough for a shell to start on a busy machine.</summary>
    private static readonly ConmonTimeouts Hurried = new(SyncPipe: TimeSpan.FromSeconds(3), FirstProcessExit: TimeSpan.FromSeconds(1));

    /// <summary>Far past <see cref="Hurried"/>: a call still running then would have hung.</summary>
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    /// <summary>
    /// conmon played by a script that hangs: it starts a monitor that outlives it and keeps the sync pipe (its pid in the
    /// -P file, as conmon writes it), then, when <paramref name="answers"/>, reports a pid; either way it never exits.
    /// </summary>
    private ConmonOciRuntime HangingConmon(bool answers)
    {
        var conmon = Dir.Combine("hanging-conmon");
        var answer = answers ? """printf '%s' '{"data": 4242}' >&3""" : ":";
        File.WriteAllText(conmon, $$"""
            #!/bin/sh
            while [ $# -gt 0 ]; do
              if [ "$1" = -P ]; then pidfile="$2"; fi
              shift
            done
            ( sleep 600 & echo $! > "$pidfile" )
            echo $$ > '{{Dir.Combine("first.pid")}}'
            {{answer}}
            exec sleep 600
            """);
        File.SetUnixFileMode(conmon, (UnixFileMode)0x1ED);
        return new ConmonOciRuntime(new OciRuntimeBinding(new RuntimeHandlerOptions("runc", "runc"), "/usr/bin/runc", "/run/crest/runtime/runc", conmon,
            Dir.Combine("exits"), Dir.Combine("attach"), SystemdCgroup: false), _runc, new Crest.Linux.LinuxSyscalls(), Hurried);
    }

    [Fact]
    public async Task A_conmon_that_never_reports_a_pid_is_killed_with_its_monitor_and_the_create_fails_naming_the_container()
    {
        var runtime = HangingConmon(answers: false);
        var options = Restore("c1").Monitor;
        try
        {
            var e = await Assert.ThrowsAsync<CrestException>(() => runtime.CreateAsync(options, TestContext.Current.CancellationToken).WaitAsync(Bound, TestContext.Current.CancellationToken));

            Assert.Equal(ErrorKind.DeadlineExceeded, e.Kind);
            Assert.Contains("container c1: conmon did not report the container's pid within 3 s", e.Message, StringComparison.Ordinal);
            Assert.Contains("create the container again", e.Message, StringComparison.Ordinal);
            await AssertEndedAsync(PidIn(Dir.Combine("first.pid")), "conmon's first process");
            await AssertEndedAsync(PidIn(options.ConmonPidFile), "conmon's monitor");
        }
        finally
        {
            KillLeftovers(options);
        }
    }

    [Fact]
    public async Task A_conmon_whose_first_process_never_exits_after_reporting_a_pid_is_killed_and_the_restore_fails_saying_so()
    {
        var runtime = HangingConmon(answers: true);
        var restore = Restore("c1");
        try
        {
            var e = await Assert.ThrowsAsync<CrestException>(() => runtime.RestoreAsync(restore, TestContext.Current.CancellationToken).WaitAsync(Bound, TestContext.Current.CancellationToken));

            var first = PidIn(Dir.Combine("first.pid"));
            Assert.Contains($"container c1: conmon's first process (pid {first.ToString(CultureInfo.InvariantCulture)}) did not exit within 1 s", e.Message, StringComparison.Ordinal);
            await AssertEndedAsync(first, "conmon's first process");
            await AssertEndedAsync(PidIn(restore.Monitor.ConmonPidFile), "conmon's monitor");
        }
        finally
        {
            KillLeftovers(restore.Monitor);
        }
    }

    private static int PidIn(string file) => int.Parse(File.ReadAllText(file).Trim(), CultureInfo.InvariantCulture);

    /// <summary>Whether <paramref name="pid"/> still runs (a zombie no longer does: only its parent's wait is left).</summary>
    private static bool Runs(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/stat");
            return stat[stat.LastIndexOf(')') + 2] != 'Z';
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static Task AssertEndedAsync(int pid, string what) =>
        Eventually.UntilAsync(() => !Runs(pid), $"{what} (pid {pid.ToString(CultureInfo.InvariantCulture)}) to be killed", TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);

    /// <summary>A run that failed leaves no sleeping stand-ins behind.</summary>
    private void KillLeftovers(ConmonCreateOptions options)
    {
        foreach (var file in new[] { Dir.Combine("first.pid"), options.ConmonPidFile })
        {
            if (File.Exists(file) && PidIn(file) is var pid && Runs(pid))
            {
                new Crest.Linux.LinuxSyscalls().KillProcessTree(pid);
            }
        }
    }

    [Fact]
    public async Task A_restore_hands_conmon_the_images_and_the_plans_criu_flags_after_the_monitors_own_arguments()
    {
        var runtime = RuntimeRestoring();
        var restore = Restore("c1", tcpEstablished: true);

        await runtime.RestoreAsync(restore, TestContext.Current.CancellationToken);

        var args = await File.ReadAllLinesAsync(Dir.Combine("conmon.args"), TestContext.Current.CancellationToken);
        Assert.Equal(restore.Monitor.Bundle, args[args.ToList().IndexOf("-b") + 1]);
        Assert.Equal(["--restore", restore.ImagePath, "--runtime-opt", "--file-locks", "--runtime-opt", "--tcp-established"], args[^6..]);
        Assert.Empty(_runc.Invocations);
    }

    [Fact]
    public async Task A_lazy_checkpoint_the_runtime_refuses_before_criu_runs_says_what_the_runtime_said()
    {
        // The runtime is a script: it refuses as runc does for an unknown container, before any dump.log exists.
        var runtimePath = Dir.Combine("refusing-runc");
        File.WriteAllText(runtimePath, "#!/bin/sh\necho 'container \"c9\" does not exist' >&2\nexit 1\n");
        File.SetUnixFileMode(runtimePath, (UnixFileMode)0x1ED);
        var runtime = new ConmonOciRuntime(new OciRuntimeBinding(new RuntimeHandlerOptions("runc", "runc"), runtimePath, Dir.Combine("root"), "conmon",
            Dir.Combine("exits"), Dir.Combine("attach"), SystemdCgroup: false), _runc, new RecordingLinux());
        var work = Dir.CreateDirectory("work");

        var e = await Assert.ThrowsAsync<CrestException>(() => runtime.StartLazyCheckpointAsync(
            new RuncCheckpointOptions { ContainerId = "c9", ImagePath = Path.Combine(work, "images"), WorkPath = work, LazyPageServer = "127.0.0.1:4100" },
            TestContext.Current.CancellationToken));

        Assert.Contains("before its page server listened", e.Message, StringComparison.Ordinal);
        Assert.Contains("container \"c9\" does not exist", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Every_command_goes_to_the_bound_binary_with_the_handlers_root_first()
    {
        var runtime = RuntimeWith("c1", "running");

        await runtime.UpdateAsync(new RuncUpdateOptions { ContainerId = "c1", Resources = new Crest.Oci.SpecResources { Memory = new Crest.Oci.SpecMemory(1 << 20) } }, TestContext.Current.CancellationToken);
        await runtime.KillAsync(new RuncKillOptions { ContainerId = "c1", Signal = 15 }, TestContext.Current.CancellationToken);

        Assert.All(_runc.Invocations, i => Assert.Equal("/usr/bin/runc", i.Program));
        Assert.Equal([$"--root={_runc.Root}", "update", "--resources", "-", "c1"], _runc.Invocations[0].Arguments);
        Assert.Contains("1048576", _runc.Invocations[0].StandardInput, StringComparison.Ordinal);
        Assert.Equal([$"--root={_runc.Root}", "kill", "--all", "c1", "15"], _runc.Invocations[1].Arguments);
    }

    [Fact]
    public async Task A_stopped_container_is_deleted_without_force_and_one_still_running_with_it()
    {
        // runc 1.2+ sleeps 100 ms after the kill of delete --force, even for a container that no longer runs.
        var runtime = RuntimeWith("c1", "stopped");
        RuntimeWith("c2", "running");

        await runtime.DeleteAsync(new RuncDeleteOptions { ContainerId = "c1" }, TestContext.Current.CancellationToken);
        await runtime.DeleteAsync(new RuncDeleteOptions { ContainerId = "c2" }, TestContext.Current.CancellationToken);

        Assert.Equal(
            [[$"--root={_runc.Root}", "delete", "c1"], [$"--root={_runc.Root}", "delete", "c2"], [$"--root={_runc.Root}", "delete", "--force", "c2"]],
            _runc.Invocations.Select(i => i.Arguments.ToArray()).ToArray());
    }

    [Fact]
    public async Task Deleting_a_container_the_runtime_keeps_no_state_for_runs_no_runtime_process()
    {
        var runtime = RuntimeWith("c1", "stopped");
        await runtime.DeleteAsync(new RuncDeleteOptions { ContainerId = "c1" }, TestContext.Current.CancellationToken);

        await runtime.DeleteAsync(new RuncDeleteOptions { ContainerId = "c1" }, TestContext.Current.CancellationToken);
        await runtime.DeleteAsync(new RuncDeleteOptions { ContainerId = "never-created" }, TestContext.Current.CancellationToken);

        Assert.Single(_runc.Invocations);
    }

    [Fact]
    public void Conmon_gets_the_systemd_flag_for_containers_and_infra_alike_when_the_driver_is_systemd()
    {
        var binding = new OciRuntimeBinding(new RuntimeHandlerOptions("runc", "runc"), "/usr/bin/runc", "/root", "conmon", "/exits", "/attach", SystemdCgroup: true);
        var sandbox = RuntimeStoreConformance.Sandbox("s1");
        var container = RuntimeStoreConformance.Container("c1", "s1");

        var forContainer = ConmonCreateOptions.ForContainer(container, sandbox, new ContainerBundle("c1", "/d", "/s", "/exits/c1", "/attach/c1")).ToArguments("conmon", binding);
        var forInfra = ConmonCreateOptions.ForInfra(sandbox, new SandboxBundle("s1", "/sandboxes/s1", "/netns/s1", "/exits/s1")).ToArguments("conmon", binding);

        Assert.Contains("-s", forContainer);
        Assert.Contains("-s", forInfra);
        Assert.Contains("--root=/root", forContainer);
        Assert.Equal("/d/bundle", forContainer[forContainer.ToList().IndexOf("-b") + 1]);
        Assert.Equal("/sandboxes/s1/infra.pid", forInfra[forInfra.ToList().IndexOf("-p") + 1]);
    }
}

public sealed class FakeOciRuntimeTests : OciRuntimeConformance
{
    private FakeOciRuntimes? _runtimes;

    protected override IOciRuntime RuntimeWith(string id, string status)
    {
        _runtimes ??= new FakeOciRuntimes(Dir.Combine("exits"));
        _runtimes.Know(id, status);
        return _runtimes.For("runc");
    }

    protected override IOciRuntime RuntimeRestoring(string? refusal = null)
    {
        _runtimes ??= new FakeOciRuntimes(Dir.Combine("exits"));
        if (refusal is not null)
        {
            _runtimes.Failures["restore"] = new CrestException(ErrorKind.FailedPrecondition, $"container c1: the OCI runtime could not create it: {refusal}");
        }

        return _runtimes.For("runc");
    }

    [Fact]
    public async Task A_restored_container_is_running_without_a_start()
    {
        var runtime = RuntimeRestoring();

        await runtime.RestoreAsync(Restore("c1"), TestContext.Current.CancellationToken);

        Assert.Equal("running", (await runtime.StateAsync(new RuncStateOptions { ContainerId = "c1" }, TestContext.Current.CancellationToken))?.Status);
    }
}

/// <summary>Plays runc's part for <see cref="ConmonOciRuntime"/>: its state machine, its exit codes and its error texts.</summary>
internal sealed class ScriptedRunc : ICommandRunner
{
    public Dictionary<string, string> Containers { get; } = new(StringComparer.Ordinal);

    /// <summary>runc's --root, where each container it knows has a state directory.</summary>
    public string Root { get; set; } = "/run/crest/runtime/runc";

    public List<CommandLine> Invocations { get; } = [];

    public Task<CommandResult> RunAsync(CommandLine command, CancellationToken ct)
    {
        Invocations.Add(command);
        var args = command.Arguments;
        var verb = args[1];
        var id = verb == "kill" ? args[3] : args[^1];
        var known = Containers.TryGetValue(id, out var status);
        if (!known)
        {
            return Done(1, "", $"container \"{id}\" does not exist");
        }

        switch (verb)
        {
            case "start" when status == "created":
            case "resume" when status == "paused":
                Containers[id] = "running";
                return Done(0);
            case "pause" when status == "running":
                Containers[id] = "paused";
                return Done(0);
            case "kill" when status is "running" or "created" or "paused":
                Containers[id] = "stopped";
                return Done(0);
            case "kill":
                return Done(1, "", "container not running");
            case "delete" when status == "stopped" || args.Contains("--force"):
                Containers.Remove(id);
                if (Directory.Exists(Path.Combine(Root, id)))
                {
                    Directory.Delete(Path.Combine(Root, id));
                }

                return Done(0);
            case "delete":
                return Done(1, "", $"cannot delete container {id} that is not stopped: {status}");
            case "state":
                return Done(0, $$"""{"id":"{{id}}","status":"{{status}}","pid":{{(status == "stopped" ? 0 : 4242).ToString(CultureInfo.InvariantCulture)}}}""");
            case "update" when status is "created" or "running" or "paused":
            case "checkpoint" when status == "running":
                return Done(0);
            default:
                return Done(1, "", $"cannot {verb} a container that is {status}");
        }
    }

    private static Task<CommandResult> Done(int code, string stdout = "", string stderr = "") => Task.FromResult(new CommandResult(code, stdout, stderr));
}
