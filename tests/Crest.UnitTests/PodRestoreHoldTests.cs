using Crest.Checkpoint;
using Crest.Core;
using Crest.Runtime;
using Crest.TestKit;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;

namespace Crest.UnitTests;

/// <summary>
/// A restored pod is held from RestorePod until every restored container has run its restore: the processes stay
/// stopped (SIGCONT to all at the end) and, with established connections, incoming TCP is dropped in its namespace.
/// </summary>
public sealed class PodRestoreHoldTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly RecordingCommands _commands = new();
    private readonly Fakes.RecordingLinux _linux = new();
    private readonly FakeTimeProvider _time = new();
    private readonly PodRestoreHolds _holds;
    private readonly SandboxRecord _pod;

    public PodRestoreHoldTests()
    {
        var layout = new RuntimeLayout(new CrestPaths(_dir.Combine("root"), _dir.Combine("state"), _dir.Combine("state", "crest.sock")));
        // c1 holds two processes (its shell and a child, both left stopped by CRIU), c2 one.
        _linux.CgroupMembers["/crest/crest-c1"] = [11, 111];
        _linux.CgroupMembers["/crest/crest-c2"] = [12];
        _holds = new PodRestoreHolds(_commands, _linux, layout, _time, NullLogger<PodRestoreHolds>.Instance);
        var netns = _dir.Combine("netns-pod");
        File.WriteAllText(netns, "");
        Directory.CreateDirectory(layout.SandboxDir("pod"));
        _pod = new SandboxRecord { Id = "pod", Spec = Fakes.RuntimeHarness.Pod(), State = SandboxState.Ready, CreatedAt = DateTimeOffset.UnixEpoch, RuntimeHandler = "runc", NetnsPath = netns, CgroupsPath = "/crest" };
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static readonly PodRestoreHolds.HeldContainer[] Both = [new("c1", "/crest/crest-c1"), new("c2", "/crest/crest-c2")];

    /// <summary>The SIGCONTs sent, by pid.</summary>
    private IEnumerable<string> Continued => _linux.Calls.Where(c => c.StartsWith("Kill", StringComparison.Ordinal) && c.EndsWith(" 18", StringComparison.Ordinal));

    /// <summary>A RestoreSteps whose holds run no command (for tests of the rootfs steps).</summary>
    internal static RestoreSteps NewRestoreSteps(RestoreOptions? options = null)
    {
        var dir = Path.Combine(Path.GetTempPath(), "crest-unit-holds");
        var layout = new RuntimeLayout(new CrestPaths(dir, dir, Path.Combine(dir, "s.sock")));
        return new RestoreSteps(options ?? new RestoreOptions(), new PodRestoreHolds(new RecordingCommands(), new Fakes.RecordingLinux(), layout, TimeProvider.System, NullLogger<PodRestoreHolds>.Instance));
    }

    [Fact]
    public async Task The_hold_drops_incoming_tcp_in_the_pods_namespace_until_the_last_restored_container_ran()
    {
        await _holds.HoldAsync(_pod, Both, holdNetwork: true, Ct);
        Assert.Equal([$"nsenter --net={_pod.NetnsPath} iptables -w -I INPUT -p tcp -m comment --comment crest-restore-hold -j DROP",
            $"nsenter --net={_pod.NetnsPath} ip6tables -w -I INPUT -p tcp -m comment --comment crest-restore-hold -j DROP"], _commands.Lines);

        await _holds.LeftCreatedAsync(_pod, "c2", true, Ct);
        Assert.Equal(2, _commands.Lines.Count);
        Assert.Empty(Continued);

        await _holds.LeftCreatedAsync(_pod, "c1", true, Ct);
        Assert.Equal(["Kill 11 18", "Kill 111 18", "Kill 12 18"], Continued);
        Assert.Equal([" -D INPUT", " -D INPUT"], _commands.Lines.Skip(2).Select(l => l.Contains(" -D INPUT", StringComparison.Ordinal) ? " -D INPUT" : l));
        await _holds.LeftCreatedAsync(_pod, "c1", true, Ct);
        Assert.Equal(4, _commands.Lines.Count);
    }

    [Fact]
    public async Task Without_established_connections_only_the_processes_are_held()
    {
        await _holds.HoldAsync(_pod, Both, holdNetwork: false, Ct);
        await _holds.LeftCreatedAsync(_pod, "c1", true, Ct);
        Assert.Empty(Continued);

        await _holds.LeftCreatedAsync(_pod, "c2", true, Ct);

        Assert.Empty(_commands.Lines);
        Assert.Equal(["Kill 11 18", "Kill 111 18", "Kill 12 18"], Continued);
    }

    [Fact]
    public async Task A_hold_ends_after_its_limit_when_a_container_is_never_started()
    {
        await _holds.HoldAsync(_pod, Both, holdNetwork: true, Ct);
        await _holds.LeftCreatedAsync(_pod, "c1", true, Ct);

        _time.Advance(PodRestoreHolds.Limit + TimeSpan.FromSeconds(1));

        await Eventually.UntilAsync(() => _commands.Lines.Count == 4 && Continued.Count() == 3, "the hold to be released after its limit", ct: Ct);
        Assert.All(_commands.Lines.Skip(2), l => Assert.Contains(" -D INPUT", l, StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_restart_releases_every_hold_a_previous_crestd_left()
    {
        await _holds.HoldAsync(_pod, [new("c1", "/crest/crest-c1")], holdNetwork: true, Ct);

        Assert.Equal(1, await _holds.ReleaseAllAsync(Ct));
        Assert.Equal(0, await _holds.ReleaseAllAsync(Ct));
        Assert.Equal(4, _commands.Lines.Count);
    }

    [Fact]
    public async Task A_container_restored_stopped_after_its_pods_hold_ended_is_continued_at_once()
    {
        await _holds.LeftCreatedAsync(_pod, "c1", leftStopped: true, Ct);
        await _holds.LeftCreatedAsync(_pod, "c2", leftStopped: false, Ct);

        Assert.Equal(["Kill 11 18", "Kill 111 18"], Continued);
    }

    [Fact]
    public async Task A_failing_iptables_fails_the_hold_with_what_to_do()
    {
        _commands.ExitCode = 4;

        var e = await Assert.ThrowsAsync<CrestException>(() => _holds.HoldAsync(_pod, Both, holdNetwork: true, Ct));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains("iptables", e.Message, StringComparison.Ordinal);
    }

    public void Dispose()
    {
        _holds.Dispose();
        _dir.Dispose();
    }

    private sealed class RecordingCommands : ICommandRunner
    {
        private readonly List<string> _lines = [];

        public int ExitCode { get; set; }

        public IReadOnlyList<string> Lines
        {
            get
            {
                lock (_lines)
                {
                    return [.. _lines];
                }
            }
        }

        public Task<CommandResult> RunAsync(CommandLine command, CancellationToken ct)
        {
            lock (_lines)
            {
                _lines.Add(command.ToString());
            }

            return Task.FromResult(new CommandResult(ExitCode, "", ExitCode == 0 ? "" : "iptables: failed"));
        }
    }
}
