using System.Text.Json;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

/// <summary>
/// <c>crest migrate --via REGISTRY/REPO</c> between two crestd nodes with real runc, conmon, CRIU and the shared loopback
/// registry (a real one): the source pushes the checkpoint as a checkpoint OCI image, the target pulls it by digest and
/// restores from it, the counter goes on; a registry that cannot be reached leaves the source running as before.
/// </summary>
[Collection(TwoNodes.Collection)]
public sealed class MigrationViaRegistryTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<JsonDocument> GetJsonAsync(string url)
    {
        using var http = new HttpClient();
        http.DefaultRequestHeaders.Accept.ParseAdd("application/vnd.oci.image.manifest.v1+json");
        return JsonDocument.Parse(await http.GetStringAsync(new Uri(url), Ct));
    }

    [Theory]
    [InlineData("stop-copy")]
    [InlineData("post-copy")]
    public async Task A_counter_migrates_through_the_registry_and_counts_on_from_where_it_froze(string strategy)
    {
        MigrationTests.RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migvia");
        if (strategy == "post-copy")
        {
            await MigrationTests.RequirePostCopyAsync(nodes);
        }

        var image = await MigrationTests.RegistryBusyboxOnAAsync(nodes);
        var (id, logA) = await MigrationTests.RunCounterOnAAsync(nodes, image);
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");
        var via = $"{nodes.Registry.Host}/e2e/checkpoints";

        var migrated = await Binaries.RunCrestAsync([.. nodes.A.R, "migrate", id, "--to", nodes.B.Crestd.Endpoint, "--pod-config", podB, "--strategy", strategy,
            "--via", via, "-o", "json"]);

        Assert.True(migrated.ExitCode == 0, $"migrate failed ({migrated.ExitCode}): {migrated.Stderr}\nA: {nodes.A.Crestd.Log}\nB: {nodes.B.Crestd.Log}");
        using var report = JsonDocument.Parse(migrated.Stdout);
        var newId = report.RootElement.GetProperty("containerId").GetString()!;
        var checkpointImage = report.RootElement.GetProperty("checkpointImage").GetString()!;
        Assert.StartsWith($"{via}@sha256:", checkpointImage, StringComparison.Ordinal);
        Assert.Contains($"pushes the checkpoint to {via}:migration-", migrated.Stderr, StringComparison.Ordinal);

        // Exactly one copy, and it counts on from its last count on A.
        Assert.Equal("", await RunAsync([.. nodes.A.R, "ps", "-a", "-q"]));
        Assert.Equal(newId, await RunAsync([.. nodes.B.R, "ps", "-q"]));
        var lastOnA = LastCount(await File.ReadAllTextAsync(logA, Ct));
        var log = await CountPassesAsync(nodes.B.Dir.Combine("logs-mig", "counter.log"), lastOnA + 3, "the migrated counter does not count on B: " + nodes.B.Crestd.Log);
        var counts = CountLine().Matches(log).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(Enumerable.Range(1, counts.Count), counts);

        // The registry holds the checkpoint image under the migration's tag, with the markers each engine detects; its
        // digest is the one the target restored from.
        using var tags = await GetJsonAsync($"http://{nodes.Registry.Host}/v2/e2e/checkpoints/tags/list");
        var tag = Assert.Single(tags.RootElement.GetProperty("tags").EnumerateArray().Select(t => t.GetString()!));
        Assert.Matches("^migration-[0-9a-f]{16}$", tag);
        using var manifest = await GetJsonAsync($"http://{nodes.Registry.Host}/v2/e2e/checkpoints/manifests/{checkpointImage[(checkpointImage.IndexOf('@') + 1)..]}");
        var annotations = manifest.RootElement.GetProperty("annotations");
        Assert.Equal("counter", annotations.GetProperty("io.kubernetes.cri-o.annotations.checkpoint.name").GetString());
        Assert.Equal("counter", annotations.GetProperty("org.criu.checkpoint.container.name").GetString());

        // Neither node keeps a copy of it: the source pushed it without storing an image, the target removed its pull.
        Assert.DoesNotContain("e2e/checkpoints", await RunAsync([.. nodes.A.R, "images"]), StringComparison.Ordinal);
        Assert.DoesNotContain("e2e/checkpoints", await RunAsync([.. nodes.B.R, "images"]), StringComparison.Ordinal);
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.A.Dir.Combine("root", "migrations")));
        TestContext.Current.TestOutputHelper?.WriteLine($"{strategy} via registry: downtime {report.RootElement.GetProperty("downtimeMs")} ms, frozen {report.RootElement.GetProperty("frozenMs")} ms\n{migrated.Stderr}");
    }

    [Fact]
    public async Task A_registry_that_cannot_be_reached_fails_the_migration_and_the_source_counts_on()
    {
        MigrationTests.RequireTools();
        await using var nodes = await TwoNodes.StartAsync("migvia");
        var image = await MigrationTests.RegistryBusyboxOnAAsync(nodes);
        var (id, logA) = await MigrationTests.RunCounterOnAAsync(nodes, image);
        var podB = await WritePodAsync(nodes.B.Dir, "mig", "uid-mig-b");
        // Port 9 (discard) on loopback: nothing listens there.
        const string Dead = "127.0.0.1:9/e2e/checkpoints";

        var migrated = await Binaries.RunCrestAsync([.. nodes.A.R, "migrate", id, "--to", nodes.B.Crestd.Endpoint, "--pod-config", podB, "--via", Dead]);

        Assert.NotEqual(0, migrated.ExitCode);
        // The message names the registry and says where the container runs; it does not blame a node's crestd.
        Assert.Contains("127.0.0.1:9", migrated.Stderr, StringComparison.Ordinal);
        Assert.Contains("undone: the container runs on", migrated.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("crestd is down or restarting", migrated.Stderr, StringComparison.Ordinal);
        Assert.Equal("CONTAINER_RUNNING", await StateAsync(nodes.A.R, id));
        Assert.Equal("", await RunAsync([.. nodes.B.R, "ps", "-a", "-q"]));
        Assert.Equal("", await RunAsync([.. nodes.B.R, "pods", "-q"]));
        var last = LastCount(await File.ReadAllTextAsync(logA, Ct));
        await CountPassesAsync(logA, last + 3, "the source does not count on after the failed migration: " + nodes.A.Crestd.Log);
        Assert.Empty(Directory.EnumerateFileSystemEntries(nodes.A.Dir.Combine("root", "migrations")));
    }
}
