using System.Globalization;
using Crest.Core;
using Crest.Runtime;
using Crest.TestKit;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;

namespace Crest.UnitTests;

/// <summary>The start of a post-copy target's <c>criu lazy-pages</c> daemon, on the injected clock.</summary>
public sealed class LazyPageTransfersTests : IDisposable
{
    private readonly TempDir _dir = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_daemon_that_never_opens_its_socket_is_killed_and_reported_once_the_clock_passes_ten_seconds()
    {
        // A stand-in criu that says who it is and then never opens the socket.
        var criu = _dir.Combine("criu");
        var pidFile = _dir.Combine("daemon.pid");
        File.WriteAllText(criu, $"#!/bin/sh\necho $$ > '{pidFile}'\nexec sleep 600\n");
        File.SetUnixFileMode(criu, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var time = new FakeTimeProvider();
        var transfers = new LazyPageTransfers(criu, time, NullLogger<LazyPageTransfers>.Instance);
        var options = new CriuLazyPagesOptions { ImagePath = _dir.CreateDirectory("images"), WorkPath = _dir.CreateDirectory("work"), Address = "127.0.0.1", Port = 1 };

        var start = transfers.StartAsync("c1", options, _ => Task.CompletedTask, () => Task.CompletedTask, Ct);
        await Eventually.UntilAsync(() => File.Exists(pidFile) && File.ReadAllText(pidFile).EndsWith('\n'), "the stand-in criu to write its pid", ct: Ct);
        var pid = int.Parse(File.ReadAllText(pidFile).Trim(), CultureInfo.InvariantCulture);

        // Only the fake clock moves past the wait: a second at a time, each given a moment to be noticed.
        var seconds = 0;
        while (!start.IsCompleted && seconds < 15)
        {
            time.Advance(TimeSpan.FromSeconds(1));
            seconds++;
            await Task.WhenAny(start, Task.Delay(TimeSpan.FromMilliseconds(200), Ct));
        }

        Assert.True(start.IsCompleted, "StartAsync still waits for the socket 15 s after it began by the injected clock");
        Assert.InRange(seconds, 11, 12);
        var e = await Assert.ThrowsAsync<CrestException>(() => start);
        Assert.Contains("container c1: criu lazy-pages did not open", e.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}"), $"the daemon (pid {pid}) still runs or was not reaped");
    }

    public void Dispose() => _dir.Dispose();
}
