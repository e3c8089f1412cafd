using Crest.Checkpoint;
using Crest.Runtime;
using Crest.TestKit;
using Crest.UnitTests.Fakes;
using Microsoft.Extensions.Logging.Abstractions;

namespace Crest.UnitTests;

public sealed class CriuKernelFactsTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly RecordingLinux _linux = new();
    private readonly ProbeRunner _probe = new();
    private readonly string _criu;
    private readonly string _run;

    public CriuKernelFactsTests()
    {
        _run = _dir.CreateDirectory("run");
        _criu = _dir.Combine("criu");
        File.WriteAllText(_criu, "#!/bin/sh\n");
        File.SetUnixFileMode(_criu, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        File.SetLastWriteTimeUtc(_criu, DateTime.UtcNow.AddDays(-1));
    }

    public void Dispose() => _dir.Dispose();

    private string Kdat => Path.Combine(_run, CriuKernelFactsCache.FileName);

    private string CacheFile => _dir.Combine("root", "criu", "kernel-facts.kdat");

    private CriuKernelFactsCache Cache(bool enabled = true) => new(
        new CriuKernelFactsOptions { Enabled = enabled, CriuPath = _criu, RunDirectory = _run, CacheFile = CacheFile, Probe = ["/usr/bin/crestd", "criu-kernel-facts"] },
        _linux, _probe, NullLogger<CriuKernelFactsCache>.Instance);

    [Fact]
    public async Task On_a_plain_run_directory_the_facts_are_gathered_in_a_private_mount_namespace_and_bound_onto_criu_kdat()
    {
        var outcome = await Cache().EnsureAsync(TestContext.Current.CancellationToken);

        Assert.Equal(CriuKernelFactsOutcome.Kept, outcome);
        var run = Assert.Single(_probe.Runs);
        Assert.Equal("unshare", run.Program);
        Assert.Equal(["--mount", "--propagation", "private", "--", "/usr/bin/crestd", "criu-kernel-facts", "--criu", _criu, "--run-dir", _run, "--out", CacheFile + ".new"], run.Arguments);
        Assert.Equal(ProbeRunner.Facts, await File.ReadAllBytesAsync(CacheFile, TestContext.Current.CancellationToken));
        Assert.False(File.Exists(CacheFile + ".new"));
        // CRIU finds an empty placeholder after a reboot (the bind is gone) and discards it.
        Assert.Equal(0, new FileInfo(Kdat).Length);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Kdat));
        Assert.Contains(Kdat, _linux.Mounts);
        Assert.Equal([$"Mount {Kdat}"], _linux.Calls);
    }

    [Fact]
    public async Task An_empty_placeholder_that_a_CRIU_run_removed_as_stale_is_made_again_before_the_bind()
    {
        await File.WriteAllBytesAsync(Kdat, [], TestContext.Current.CancellationToken);
        _probe.OnRun = () => File.Delete(Kdat);

        Assert.Equal(CriuKernelFactsOutcome.Kept, await Cache().EnsureAsync(TestContext.Current.CancellationToken));
        Assert.True(File.Exists(Kdat));
        Assert.Equal([$"Mount {Kdat}"], _linux.Calls);
    }

    [Fact]
    public async Task A_tmpfs_run_directory_is_left_to_CRIU()
    {
        _linux.Tmpfs.Add(_run);

        Assert.Equal(CriuKernelFactsOutcome.CriuKeepsThem, await Cache().EnsureAsync(TestContext.Current.CancellationToken));
        Assert.Empty(_probe.Runs);
        Assert.False(File.Exists(Kdat));
    }

    [Fact]
    public async Task Turned_off_it_does_nothing()
    {
        Assert.Equal(CriuKernelFactsOutcome.Disabled, await Cache(enabled: false).EnsureAsync(TestContext.Current.CancellationToken));
        Assert.Empty(_probe.Runs);
        Assert.False(File.Exists(Kdat));
    }

    [Fact]
    public async Task Facts_newer_than_the_CRIU_binary_are_kept_as_they_are()
    {
        await File.WriteAllBytesAsync(Kdat, ProbeRunner.Facts, TestContext.Current.CancellationToken);

        Assert.Equal(CriuKernelFactsOutcome.AlreadyKept, await Cache().EnsureAsync(TestContext.Current.CancellationToken));
        Assert.Empty(_probe.Runs);
        Assert.Empty(_linux.Calls);
    }

    [Fact]
    public async Task Facts_bound_before_CRIU_was_upgraded_are_taken_off_and_gathered_again()
    {
        await File.WriteAllBytesAsync(Kdat, ProbeRunner.Facts, TestContext.Current.CancellationToken);
        File.SetLastWriteTimeUtc(Kdat, DateTime.UtcNow.AddDays(-2));
        _linux.Mount(CacheFile, Kdat, null, Crest.Linux.MountOptions.Bind, null);

        Assert.Equal(CriuKernelFactsOutcome.Kept, await Cache().EnsureAsync(TestContext.Current.CancellationToken));
        Assert.Single(_probe.Runs);
        Assert.Equal([$"Mount {Kdat}", $"Unmount {Kdat}", $"Mount {Kdat}"], _linux.Calls);
    }

    [Fact]
    public async Task An_old_file_that_no_crestd_bound_is_an_operators_and_is_left_alone()
    {
        await File.WriteAllBytesAsync(Kdat, ProbeRunner.Facts, TestContext.Current.CancellationToken);
        File.SetLastWriteTimeUtc(Kdat, DateTime.UtcNow.AddDays(-2));

        Assert.Equal(CriuKernelFactsOutcome.AlreadyKept, await Cache().EnsureAsync(TestContext.Current.CancellationToken));
        Assert.Empty(_probe.Runs);
        Assert.Empty(_linux.Calls);
    }

    [Fact]
    public async Task A_probe_that_fails_binds_nothing_and_leaves_no_file()
    {
        _probe.ExitCode = 1;

        Assert.Equal(CriuKernelFactsOutcome.Failed, await Cache().EnsureAsync(TestContext.Current.CancellationToken));
        Assert.Empty(_linux.Calls);
        Assert.False(File.Exists(CacheFile));
        Assert.False(File.Exists(CacheFile + ".new"));
    }

    [Fact]
    public async Task While_another_crestd_holds_the_file_it_is_left_to_that_one()
    {
        await using var other = new FileStream(Path.Combine(_run, CriuKernelFactsCache.LockName), FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None);

        Assert.Equal(CriuKernelFactsOutcome.Busy, await Cache().EnsureAsync(TestContext.Current.CancellationToken));
        Assert.Empty(_probe.Runs);
        Assert.Empty(_linux.Calls);
    }

    [Fact]
    public async Task A_missing_CRIU_is_a_failure_that_touches_nothing()
    {
        File.Delete(_criu);

        Assert.Equal(CriuKernelFactsOutcome.Failed, await Cache().EnsureAsync(TestContext.Current.CancellationToken));
        Assert.Empty(_probe.Runs);
        Assert.False(File.Exists(Kdat));
    }

    /// <summary>The probe as crestd's would answer: writes facts to --out, or fails.</summary>
    private sealed class ProbeRunner : ICommandRunner
    {
        public static readonly byte[] Facts = [1, 2, 3, 4];

        public List<CommandLine> Runs { get; } = [];

        public int ExitCode { get; set; }

        /// <summary>Runs while the probe runs (as another process would meanwhile).</summary>
        public Action? OnRun { get; set; }

        public async Task<CommandResult> RunAsync(CommandLine command, CancellationToken ct)
        {
            Runs.Add(command);
            OnRun?.Invoke();
            if (ExitCode != 0)
            {
                return new CommandResult(ExitCode, "", "criu check failed");
            }

            var output = command.Arguments[^1];
            await File.WriteAllBytesAsync(output, Facts, ct);
            return new CommandResult(0, "", "");
        }
    }
}
