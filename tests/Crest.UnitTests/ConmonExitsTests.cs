using System.Diagnostics;
using Crest.Core;
using Crest.Runtime;
using Crest.TestKit;
using Microsoft.Extensions.Time.Testing;

namespace Crest.UnitTests;

/// <summary>Exits learned from conmon's exit directory as they are written, never by polling for them.</summary>
public sealed class ConmonExitsTests : IDisposable
{
    private const string Id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    private readonly TempDir _dir = new();
    private readonly RuntimeLayout _layout;

    public ConmonExitsTests()
    {
        _layout = new RuntimeLayout(new CrestPaths(_dir.Combine("root"), _dir.Combine("state"), _dir.Combine("state/crest.sock")));
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task An_exit_recorded_before_the_wait_is_seen_at_once()
    {
        using var exits = new ConmonExits(_layout, new FakeTimeProvider());
        await WriteAsConmonAsync(Id, "137");

        Assert.True(await exits.WaitAsync(Id, TimeSpan.Zero, Ct));
    }

    [Fact]
    public async Task A_wait_wakes_when_conmon_renames_the_exit_file_into_place()
    {
        // The fake clock never moves, so only the exit file can end this wait.
        using var exits = new ConmonExits(_layout, new FakeTimeProvider());
        var waiting = exits.WaitAsync(Id, TimeSpan.FromSeconds(1), Ct);
        Assert.False(waiting.IsCompleted);

        var clock = Stopwatch.StartNew();
        await WriteAsConmonAsync(Id, "0");

        Assert.True(await waiting.WaitAsync(TimeSpan.FromSeconds(10), Ct));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"woken after {clock.Elapsed}");
    }

    [Fact]
    public async Task A_wait_with_no_exit_ends_false_when_its_timeout_passes()
    {
        var time = new FakeTimeProvider();
        using var exits = new ConmonExits(_layout, time);
        var waiting = exits.WaitAsync(Id, TimeSpan.FromSeconds(10), Ct);

        time.Advance(TimeSpan.FromSeconds(9));
        await Task.Delay(50, Ct);
        Assert.False(waiting.IsCompleted);
        time.Advance(TimeSpan.FromSeconds(1));

        Assert.False(await waiting.WaitAsync(TimeSpan.FromSeconds(10), Ct));
    }

    [Fact]
    public async Task Subscribers_hear_each_exit_once_by_id_and_never_conmons_temporary_file()
    {
        using var exits = new ConmonExits(_layout, new FakeTimeProvider());
        var heard = new List<string>();
        var first = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        exits.Exited += id =>
        {
            lock (heard)
            {
                heard.Add(id);
            }

            first.TrySetResult(id);
        };

        await WriteAsConmonAsync(Id, "1");

        Assert.Equal(Id, await first.Task.WaitAsync(TimeSpan.FromSeconds(10), Ct));
        await Task.Delay(200, Ct);
        lock (heard)
        {
            Assert.Equal([Id], heard);
        }
    }

    /// <summary>What conmon's g_file_set_contents does: a temporary file beside the exit file, renamed over it.</summary>
    private async Task WriteAsConmonAsync(string id, string code)
    {
        var file = Path.Combine(_layout.ExitDir, id);
        await File.WriteAllTextAsync(file + ".Q2XK1Z", code, Ct);
        File.Move(file + ".Q2XK1Z", file);
    }

    public void Dispose() => _dir.Dispose();
}
