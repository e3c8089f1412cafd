using Crest.Core;
using Crest.Runtime;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>
/// Concurrent CRI calls on one object (issue 18, item 5): start, stop, checkpoint and remove fired at once on one container,
/// lists running alongside, many times over. Whatever order the per-container lock lets them run in, the end is a state
/// the CRI allows, the record and the runtime agree, nothing is left paused, and the only errors are the documented ones.
/// </summary>
public sealed class ContainerConcurrencyTests : IDisposable
{
    private const int Rounds = 200;

    private readonly RuntimeHarness _h = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Start_stop_checkpoint_and_remove_at_once_on_one_container_always_end_in_a_consistent_state()
    {
        var pod = await _h.ReadyPodAsync(Ct);
        var random = new Random(18);
        var outcomes = new Dictionary<string, int>(StringComparer.Ordinal);
        var dumps = new Dictionary<string, int>(StringComparer.Ordinal);
        for (var round = 0; round < Rounds; round++)
        {
            var c = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container() with { Attempt = (uint)round }, Ct);
            if (random.Next(2) == 0)
            {
                await _h.Containers.StartAsync(c.Id, Ct);
            }

            var withRemove = random.Next(2) == 0;
            var jitter = random.Next(3);
            var calls = new List<Func<Task>>
            {
                () => _h.Containers.StartAsync(c.Id, Ct),
                () => _h.Containers.StopAsync(c.Id, TimeSpan.FromSeconds(1), Ct),
                async () =>
                {
                    var outcome = "refused";
                    try
                    {
                        await _h.Containers.DumpAsync(c.Id, "/images", "/work", tcpEstablished: false, async (_, _, ct) => await Task.Delay(jitter, ct), Ct);
                        outcome = "dumped";
                    }
                    finally
                    {
                        lock (dumps)
                        {
                            dumps[outcome] = dumps.GetValueOrDefault(outcome) + 1;
                        }
                    }
                },
                () => _h.Containers.ListAsync(Ct),
                () => _h.Containers.ListAsync(Ct),
            };
            if (withRemove)
            {
                calls.Add(() => _h.Containers.RemoveAsync(c.Id, Ct));
                calls.Add(() => _h.Containers.UpdateResourcesAsync(c.Id, new ResourceSpec { CpuShares = 512 }, Ct));
            }

            random.Shuffle(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(calls));
            var go = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var running = calls.Select(call => Task.Run(async () =>
            {
                await go.Task;
                await call();
            }, Ct)).ToList();
            go.SetResult();
            foreach (var t in running)
            {
                try
                {
                    await t;
                }
                catch (CrestException e) when (e.Kind is ErrorKind.FailedPrecondition or ErrorKind.NotFound)
                {
                    // What the CRI documents for a call that lost the race (not running, already gone).
                }
            }

            var outcome = await AssertConsistentAsync(c.Id, withRemove);
            outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
            await _h.Containers.RemoveAsync(c.Id, Ct);
        }

        Assert.Empty(await _h.Containers.ListAsync(Ct));
        Assert.Empty(await _h.Store.ListContainersAsync(Ct));
        // The calls really did interleave differently: some checkpoints ran before the stop or removal, some after.
        var seen = $"endings: {string.Join(", ", outcomes.Select(o => $"{o.Key}={o.Value}"))}; checkpoints: {string.Join(", ", dumps.Select(o => $"{o.Key}={o.Value}"))}";
        Assert.True(outcomes.Count == 2 && dumps.Count == 2, seen);
        TestContext.Current.TestOutputHelper?.WriteLine(seen);
    }

    [Fact]
    public async Task Pod_stop_and_remove_racing_lists_never_bring_a_removed_pod_back()
    {
        await _h.ImportImageAsync(Ct);
        for (var round = 0; round < 100; round++)
        {
            var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod("web" + round), Ct);
            var c = await _h.Containers.CreateAsync(pod.Id, RuntimeHarness.Container(), Ct);
            await _h.Containers.StartAsync(c.Id, Ct);
            var go = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Func<Task>[] calls =
            [
                () => _h.Pods.StopAsync(pod.Id, Ct),
                () => _h.Pods.RemoveAsync(pod.Id, Ct),
                () => _h.Sandboxes.ListAsync(Ct),
                () => _h.Containers.ListAsync(Ct),
                () => _h.Sandboxes.ListAsync(Ct),
            ];
            await Task.WhenAll(calls.Select(call => Task.Run(async () =>
            {
                await go.Task;
                await call();
            }, Ct)).Append(Task.Run(go.SetResult, Ct)));

            Assert.Null(await _h.Store.GetSandboxAsync(pod.Id, Ct));
            Assert.Null(await _h.Store.GetContainerAsync(c.Id, Ct));
            Assert.Null(_h.Runtimes.StatusOf(c.Id));
        }

        Assert.Empty(await _h.Sandboxes.ListAsync(Ct));
    }

    [Fact]
    public async Task A_keyed_lock_serialises_one_key_lets_other_keys_through_and_forgets_released_keys()
    {
        var locks = new KeyedLock();
        var first = await locks.AcquireAsync("c1", Ct);

        var sameKey = locks.AcquireAsync("c1", Ct);
        using (await locks.AcquireAsync("c2", Ct).WaitAsync(TimeSpan.FromSeconds(5), Ct))
        {
            Assert.False(sameKey.IsCompleted);
        }

        first.Dispose();
        (await sameKey.WaitAsync(TimeSpan.FromSeconds(5), Ct)).Dispose();

        using var cancel = new CancellationTokenSource();
        var held = await locks.AcquireAsync("c3", Ct);
        var cancelled = locks.AcquireAsync("c3", cancel.Token);
        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled);
        held.Dispose();

        Assert.Equal(0, locks.Count);
    }

    /// <summary>Checks the container against the runtime; returns which legal ending it reached.</summary>
    private async Task<string> AssertConsistentAsync(string id, bool removed)
    {
        var runtime = _h.Runtimes.StatusOf(id);
        Assert.NotEqual("paused", runtime);
        var record = await _h.Store.GetContainerAsync(id, Ct);
        if (removed)
        {
            Assert.Null(record);
            Assert.Null(runtime);
            Assert.DoesNotContain(await _h.Containers.ListAsync(Ct), c => c.Id == id);
            Assert.False(Directory.Exists(_h.Layout.Container(id).Dir));
            return "removed";
        }

        Assert.NotNull(record);
        var current = await _h.Containers.GetAsync(id, Ct);
        switch (current.State)
        {
            case ContainerState.Created:
                Assert.Equal("created", runtime);
                break;
            case ContainerState.Running:
                Assert.Equal("running", runtime);
                break;
            case ContainerState.Exited:
                Assert.True(runtime is null or "stopped", $"container {id} is EXITED on record but {runtime} in the runtime");
                break;
            default:
                Assert.Fail($"container {id} ended {current.State}");
                break;
        }

        return current.State.ToString();
    }

    public void Dispose() => _h.Dispose();
}
