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
    private readonly PageTransferIdentities _identities;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public PostCopyRestoreTests()
    {
        _identities = new PageTransferIdentities(_dir.Combine("page-tls"), new NoCommands(), "/bin/sh");
        _h = new RuntimeHarness(new LazyPageTransfers(_dir.Combine("criu"), TimeProvider.System, NullLogger<LazyPageTransfers>.Instance, _identities));
    }

    private sealed class NoCommands : ICommandRunner
    {
        public Task<CommandResult> RunAsync(CommandLine command, CancellationToken ct) => Task.FromResult(new CommandResult(0, "", ""));
    }

    /// <summary>A stand-in for <c>criu lazy-pages</c>: opens its socket in the work directory, writes its log, then runs <paramref name="then"/>.</summary>
    private void LazyPagesDaemon(string then)
    {
        var criu = _dir.Combine("criu");
        File.WriteAllText(criu, $$"""
            #!/bin/sh
            echo "$@" > "{{_dir.Combine("args")}}"
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

    private async Task<ContainerRecord> CreatedPostCopyAsync(string? identity = null, string? serverCertificate = null)
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var plan = await _h.StagedRestorePlanAsync(true, Ct) with
        {
            Source = "/var/lib/crest/migrations/m.tar",
            Criu = new CriuRestoreOptions { FileLocks = true, LazyPagesFrom = "127.0.0.1:1", LazyPagesIdentity = identity, LazyPagesServerCertificate = serverCertificate },
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

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_post_copy_restore_over_tls_gives_lazy_pages_its_key_pair_and_the_source_certificate_and_removes_them_when_the_transfer_ends(bool restored)
    {
        LazyPagesDaemon(restored ? "exit 0" : "exec sleep 30");
        var mine = _identities.Create(TimeProvider.System);
        var source = _identities.Create(TimeProvider.System);
        _identities.Remove(source.Token);
        var c = await CreatedPostCopyAsync(mine.Token, source.Certificate);
        if (!restored)
        {
            _h.Runtimes.Failures["restore"] = new CrestException(ErrorKind.FailedPrecondition, $"container {c.Id}: the OCI runtime could not create it: criu failed");
        }

        var start = _h.Containers.StartAsync(c.Id, Ct).WaitAsync(Bound, Ct);
        if (restored)
        {
            await start;
        }
        else
        {
            await Assert.ThrowsAsync<CrestException>(() => start);
        }

        var ended = await _h.Containers.LazyPagesStateAsync(c.Id, wait: true, Ct).WaitAsync(Bound, Ct);

        var dir = Path.Combine(_identities.Root, mine.Token);
        Assert.Contains($"--tls --tls-cacert {dir}/peer.pem --tls-cert {dir}/cert.pem --tls-key {dir}/key.pem --tls-no-cn-verify", File.ReadAllText(_dir.Combine("args")), StringComparison.Ordinal);
        Assert.True(ended is { Finished: true });
        Assert.False(Directory.Exists(dir), "the page client's key pair outlived its transfer");
    }

    public void Dispose()
    {
        _h.Dispose();
        _dir.Dispose();
    }
}
