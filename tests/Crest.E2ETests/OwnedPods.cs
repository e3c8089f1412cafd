namespace Crest.E2ETests;

/// <summary>
/// The pods of one CRI endpoint (a test's crestd or its containerd peer) that a test owns. When the test ends, pass or
/// fail, every pod the endpoint lists and every pod made through <see cref="RunAsync"/> is stopped and removed through
/// CRI, so a failing assertion never leaks a pod, its mounts, its network namespace or an image lease. Declare it with
/// <c>await using</c> after the daemon, so that it is disposed while the daemon still answers. What it cannot remove is
/// reported to <see cref="Crest.Tests.LeakCheckAttribute"/>, which fails the test without hiding its own failure.
/// </summary>
internal sealed class OwnedPods(params string[] endpoint) : IAsyncDisposable
{
    private readonly List<string> _made = [];

    /// <summary>crest runp; the pod is removed when the test ends whatever happens in between.</summary>
    public async Task<string> RunAsync(string podConfig)
    {
        var id = await CheckpointSteps.RunAsync([.. endpoint, "runp", podConfig]);
        _made.Add(id);
        return id;
    }

    /// <summary>crest rmp as a step of the test (it must succeed); the pod is no longer owned.</summary>
    public async Task RemoveAsync(string podId)
    {
        await CheckpointSteps.RunAsync([.. endpoint, "rmp", podId]);
        _made.Remove(podId);
    }

    public async ValueTask DisposeAsync()
    {
        // The endpoint's own list is the truth (a test may have made or removed pods by other verbs); what this owner
        // made stands in for it when the daemon no longer answers.
        var listed = await Binaries.RunCrestAsync([.. endpoint, "pods", "-q"]);
        if (listed.ExitCode != 0)
        {
            if (_made.Count > 0)
            {
                Crest.Tests.LeakCheckAttribute.Report(
                    $"the pods {string.Join(", ", _made)} of {string.Join(' ', endpoint)} could not be removed: listing pods failed ({listed.ExitCode}): {listed.Stderr.Trim()}");
            }

            return;
        }

        var failures = new List<string>();
        foreach (var id in listed.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            // Stop first: containerd removes only a stopped sandbox; crestd stops it either way.
            await Binaries.RunCrestAsync([.. endpoint, "stopp", id]);
            var removed = await Binaries.RunCrestAsync([.. endpoint, "rmp", id]);
            if (removed.ExitCode != 0)
            {
                failures.Add($"pod {id}: rmp failed ({removed.ExitCode}): {removed.Stderr.Trim()}");
            }
        }

        if (failures.Count > 0)
        {
            Crest.Tests.LeakCheckAttribute.Report($"{string.Join(' ', endpoint)}: {string.Join("; ", failures)}");
        }
    }
}
