using Xunit;

namespace Crest.TestKit;

/// <summary>
/// Waits for a condition with a bound instead of sleeping a fixed time: fast when the machine is fast, patient when two
/// cores are busy, and on timeout the test fails naming what it waited for and what it saw last.
/// </summary>
public static class Eventually
{
    /// <summary>Enough for a loaded 2-core machine; a wait that needs longer says so.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(20);

    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(100);

    /// <summary>Polls <paramref name="condition"/> until it holds; fails with "timed out after N s waiting for WHAT".</summary>
    public static Task UntilAsync(Func<bool> condition, string what, TimeSpan? timeout = null, CancellationToken ct = default) =>
        UntilAsync(() => Task.FromResult(condition()), what, timeout, ct);

    /// <inheritdoc cref="UntilAsync(Func{bool}, string, TimeSpan?, CancellationToken)"/>
    public static async Task UntilAsync(Func<Task<bool>> condition, string what, TimeSpan? timeout = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(condition);
        await UntilAsync(condition, done => done, what, timeout, describe: null, ct);
    }

    /// <summary>
    /// Polls <paramref name="probe"/> until <paramref name="done"/> accepts its value and returns that value; fails naming
    /// <paramref name="what"/> and the last value seen (through <paramref name="describe"/> when given).
    /// </summary>
    public static async Task<T> UntilAsync<T>(
        Func<Task<T>> probe, Func<T, bool> done, string what, TimeSpan? timeout = null, Func<T, string>? describe = null, CancellationToken ct = default)
    {
        var (met, last) = await PollAsync(probe, done, timeout ?? DefaultTimeout, ct);
        if (!met)
        {
            var seen = describe is null ? "" : $"; last seen:\n{describe(last)}";
            Assert.Fail($"timed out after {(timeout ?? DefaultTimeout).TotalSeconds:0.#} s waiting for {what}{seen}");
        }

        return last;
    }

    /// <summary>
    /// Polls <paramref name="probe"/> until <paramref name="done"/> accepts its value or the time is up, and returns the
    /// last value either way: for callers that assert on it with a message of their own.
    /// </summary>
    public static async Task<T> LastAsync<T>(Func<Task<T>> probe, Func<T, bool> done, TimeSpan? timeout = null, CancellationToken ct = default) =>
        (await PollAsync(probe, done, timeout ?? DefaultTimeout, ct)).Last;

    /// <summary>
    /// The body at <paramref name="url"/> once a server answers there, or "" when none did in time: a server in a
    /// container may still be starting, and a refused or timed-out request is tried again.
    /// </summary>
    public static Task<string> ServedAsync(HttpClient http, Uri url, TimeSpan? timeout = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(http);
        return LastAsync(
            async () =>
            {
                try
                {
                    return await http.GetStringAsync(url, ct);
                }
                catch (Exception e) when (e is HttpRequestException || (e is TaskCanceledException && !ct.IsCancellationRequested))
                {
                    return "";
                }
            },
            body => body.Length > 0, timeout, ct);
    }

    private static async Task<(bool Met, T Last)> PollAsync<T>(Func<Task<T>> probe, Func<T, bool> done, TimeSpan timeout, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(probe);
        ArgumentNullException.ThrowIfNull(done);
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var value = await probe();
            if (done(value))
            {
                return (true, value);
            }

            if (DateTime.UtcNow > deadline)
            {
                return (false, value);
            }

            await Task.Delay(Poll, ct);
        }
    }
}
