using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

/// <summary>
/// The kubelet's side of CheckpointContainer (reference scenario 16) as Crest sees it: the location the kubelet
/// builds, and its timeout, which is never below the runtime's default and is honoured when above it.
/// </summary>
public partial class CheckpointCliTests
{
    [Fact]
    public async Task A_kubelet_checkpoint_writes_its_location_and_its_timeout_is_raised_to_the_default_or_honoured_above_it()
    {
        RequireCheckpointTools();
        using var dir = new TempDir("crest-e2e-kbl");
        // runc runs criu from PATH. This one waits 3 s before it becomes the real CRIU: longer than the 2 s default
        // deadline configured below, shorter than the 60 s a request asks for.
        var slow = dir.CreateDirectory("slowbin");
        var realCriu = Requires.Binary("criu");
        await File.WriteAllTextAsync(Path.Combine(slow, "criu"), $"#!/bin/sh\nsleep 3\nexec {realCriu} \"$@\"\n", Ct);
        File.SetUnixFileMode(Path.Combine(slow, "criu"), (UnixFileMode)0x1ED);
        await using var s = await StartAsync(dir, RestoreOn + $"[checkpoint]\ntimeout_seconds = 2\ncriu_path = \"{realCriu}\"\n", environment: new Dictionary<string, string>
        {
            ["PATH"] = slow + ":" + Environment.GetEnvironmentVariable("PATH"),
        });
        var crestd = s.Crestd;
        var r = s.R;
        var (_, id) = await RunCounterAsync(s);

        // The kubelet's directory (0700) and file name: checkpoint-<pod>_<namespace>-<container>-<RFC3339>.tar.
        var checkpoints = Directory.CreateDirectory(dir.Combine("kubelet", "checkpoints"), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute).FullName;
        var location = Path.Combine(checkpoints, $"checkpoint-counter_default-counter-{DateTime.UtcNow:yyyy-MM-ddTHH:mm:ssZ}.tar");

        // 1 s is below the 2 s default, so the runtime waits 2 s, which this CRIU does not meet.
        var tooShort = await Binaries.RunCrestAsync([.. r, "checkpoint", "--timeout-seconds", "1", "--export", location, id]);
        Assert.NotEqual(0, tooShort.ExitCode);
        Assert.True(tooShort.Stderr.Contains("within its 2 s timeout", StringComparison.Ordinal), tooShort.Stderr);
        Assert.Empty(Directory.EnumerateFileSystemEntries(checkpoints));
        Assert.Empty(Directory.EnumerateDirectories(dir.Combine("root", "containers", id), "checkpoint-work*"));
        var logFile = dir.Combine("logs-counter", "counter.log");
        var n = LastCount(await File.ReadAllTextAsync(logFile, Ct));
        Assert.True(LastCount(await WaitForCountAsync(logFile, n)) > n, "the container is still frozen after a checkpoint ran out of time");

        // 60 s is above the default: the runtime honours it and the slow CRIU finishes.
        var ok = await Binaries.RunCrestAsync([.. r, "checkpoint", "--timeout-seconds", "60", "--export", location, id]);
        Assert.True(ok.ExitCode == 0, ok.Stderr);
        Assert.Equal(location, ok.Stdout.Trim());
        Assert.Equal([location], Directory.EnumerateFileSystemEntries(checkpoints));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(location));
        Assert.Equal("CONTAINER_RUNNING", (await InspectAsync(r, id)).GetProperty("status").GetProperty("state").GetString());
        var show = await Tool("checkpointctl", "show", location);
        Assert.True(show.ExitCode == 0, show.Output);
    }

    [Fact]
    public async Task Crest_restore_puts_an_archive_back_into_a_pod_under_its_checkpointed_name()
    {
        RequireCheckpointTools();
        using var dir = new TempDir("crest-e2e-rst");
        await using var s = await StartAsync(dir);
        var crestd = s.Crestd;
        var r = s.R;
        var (podId, id) = await RunCounterAsync(s);
        await CountPassesAsync(dir.Combine("logs-counter", "counter.log"), 3);
        var archive = dir.Combine("cp.tar");
        await RunAsync([.. r, "checkpoint", "--export", archive, id]);
        await RunAsync([.. r, "stop", id]);
        await RunAsync([.. r, "rm", id]);
        var logFile = dir.Combine("logs-counter", "counter.log");
        var lastBefore = LastCount(await File.ReadAllTextAsync(logFile, Ct));
        File.Delete(logFile);

        // The counter ran in the pod's pid namespace (no namespace_options): a private one is refused, naming the setting.
        var wrong = await Binaries.RunCrestAsync([.. r, "restore", "--pod", podId, "--pid", "container", archive]);
        Assert.Equal(1, wrong.ExitCode);
        Assert.True(wrong.Stderr.Contains("namespace_options.pid = POD", StringComparison.Ordinal), wrong.Stderr);

        var restored = await RunAsync([.. r, "restore", "--pod", podId, Path.GetRelativePath(Environment.CurrentDirectory, archive)]);

        var status = (await InspectAsync(r, restored)).GetProperty("status");
        Assert.Equal("CONTAINER_RUNNING", status.GetProperty("state").GetString());
        Assert.Equal("counter", status.GetProperty("metadata").GetProperty("name").GetString());
        Assert.Equal(archive, status.GetProperty("annotations").GetProperty("checkpointImage").GetString());
        var log = await WaitForCountAsync(logFile, lastBefore + 2);
        Assert.True(LastCount(log) > lastBefore + 2, crestd.Log);
    }
}
