using Crest.Core;
using Crest.Runtime;
using Crest.TestKit;
using Crest.UnitTests.Fakes;
using Microsoft.Extensions.Logging.Abstractions;

namespace Crest.UnitTests;

/// <summary>
/// StartContainer of a post-copy restore whose restore fails: the lazy-pages daemon started for it is stopped and the
/// start ends with the error, never waiting on the daemon's watchdog (which waits for the restore to return).
/// </summary>
public sealed class PostCopyRestoreTests : IDisposable
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    private readonly TempDir _dir = new();
    private readonly RuntimeHarness _h;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public PostCopyRestoreTests()
    {
        _h = new RuntimeHarness(new LazyPageTransfers(_dir.Combine("criu"), TimeProvider.System, NullLogger<LazyPageTransfers>.Instance));
    }

    /// <summary>A stand-in for <c>criu lazy-pages</c>: opens its socket in the work directory, writes its log, then runs <paramref name="then"/>.</summary>
    private void LazyPagesDaemon(string then)
    {
        var criu = _dir.Combine("criu");
        File.WriteAllText(criu, $$"""
            #!/bin/sh
            while [ $# -gt 0 ]; do
              if [ "$1" = --work-dir ]; then work="$2"; fi
              shift
            done
            echo "(00.001) Error (criu/uffd.c:1): uffd: Can't connect to page server" > "$work/lazy-pages.log"
            touch "$work/lazy-pages.socket"
            {{then}}
            """);
        File.SetUnixFileMode(criu, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
    }

    private async Task<ContainerRecord> CreatedPostCopyAsync()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var plan = await _h.StagedRestorePlanAsync(true, Ct) with
        {
            Source = "/var/lib/crest/migrations/m.tar",
            Criu = new CriuRestoreOptions { FileLocks = true, LazyPagesFrom = "127.0.0.1:1" },
        };
        return await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), plan, Ct);
    }

    [Theory]
    [InlineData("exec sleep 30")] // the daemon still waits for the restore's connection
    [InlineData("exit 1")] // the daemon gave up first (its page source unreachable)
    public async Task A_post_copy_restore_that_fails_ends_its_start_with_the_error_and_the_daemons_log(string daemon)
    {
        LazyPagesDaemon(daemon);
        var c = await CreatedPostCopyAsync();
        _h.Runtimes.Failures["restore"] = new CrestException(ErrorKind.FailedPrecondition, $"container {c.Id}: the OCI runtime could not create it: criu failed");

        var e = await Assert.ThrowsAsync<CrestException>(() => _h.Containers.StartAsync(c.Id, Ct).WaitAsync(Bound, Ct));

        Assert.Contains($"container {c.Id} could not be restored", e.Message, StringComparison.Ordinal);
        Assert.Contains("Can't connect to page server", e.Message, StringComparison.Ordinal);
        var after = await _h.Containers.GetAsync(c.Id, Ct);
        Assert.Equal((ContainerState.Exited, 128, "StartError"), (after.State, after.ExitCode, after.Reason));
        var transfer = await _h.Containers.LazyPagesStateAsync(c.Id, wait: false, Ct);
        Assert.True(transfer is { Finished: true, Succeeded: false }, $"the lazy-pages daemon is not over: {transfer}");
    }

    public void Dispose()
    {
        _h.Dispose();
        _dir.Dispose();
    }
}
