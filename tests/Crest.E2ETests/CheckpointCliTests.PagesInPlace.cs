using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

// A restore from a plain archive whose page images CRIU reads where the archive holds them (an erofs index mounted
// over the archive), with real runc, conmon and CRIU.
public partial class CheckpointCliTests
{
    private static IReadOnlyList<string> ErofsMountsUnder(string dir) =>
        [.. File.ReadLines("/proc/self/mountinfo").Where(l => l.Contains(" - erofs ", StringComparison.Ordinal)).Select(l => l.Split(' ')[4]).Where(m => m.StartsWith(dir, StringComparison.Ordinal))];

    [Fact]
    public async Task A_plain_archive_restores_with_its_pages_read_in_place_and_the_mount_goes_with_the_restore()
    {
        RequireCheckpointTools();
        Requires.Binary("mkfs.erofs");
        using var dir = new TempDir("crest-e2e-crp");
        // Every archive's pages in place, however small: the counter's are a few hundred KiB, under the default floor.
        await using var s = await StartAsync(dir, RestoreOn + "pages_in_place_min_bytes = 0\n");
        var r = s.R;
        var (podId, id) = await RunCounterAsync(s);
        await CountPassesAsync(dir.Combine("logs-counter", "counter.log"), 3);
        var archive = dir.Combine("cp.tar");
        await RunAsync([.. r, "checkpoint", "--export", archive, id]);
        var lastBefore = LastCount(await File.ReadAllTextAsync(dir.Combine("logs-counter", "counter.log"), Ct));
        await RunAsync([.. r, "rm", id]);

        async Task<string> CreateRestoredAsync(string from, string log, int attempt)
        {
            var config = dir.Combine($"restore-{log}.json");
            await File.WriteAllTextAsync(config, $$"""{"metadata": {"name": "counter", "attempt": {{attempt}}}, "image": {"image": "{{from}}"}, "log_path": "{{log}}", "linux": {} }""", Ct);
            return await RunAsync([.. r, "create", podId, config, s.PodConfig]);
        }

        var restored = await CreateRestoredAsync(archive, "restored.log", 1);
        var restoreDir = dir.Combine("root", "containers", restored, "restore");
        // CRIU's page images are links into a read-only erofs mount over the archive: nothing of the memory was copied.
        var pages = Directory.GetFiles(Path.Combine(restoreDir, "checkpoint"), "pages-*.img");
        Assert.NotEmpty(pages);
        Assert.All(pages, p => Assert.StartsWith("../.archive-pages/checkpoint/pages-", new FileInfo(p).LinkTarget, StringComparison.Ordinal));
        Assert.Single(ErofsMountsUnder(restoreDir));
        Assert.Contains("are read where the archive holds them", s.Crestd.Log, StringComparison.Ordinal);

        // The archive may go once CreateContainer answered, as with an archive unpacked in full: the mount holds it.
        File.Delete(archive);
        await RunAsync([.. r, "start", restored]);
        Assert.True(LastCount(await WaitForCountAsync(dir.Combine("logs-counter", "restored.log"), lastBefore)) > lastBefore);
        Assert.Empty(ErofsMountsUnder(dir.Path));
        Assert.False(Directory.Exists(restoreDir));

        // A restore created and removed without a start lets its mount go too.
        var again = dir.Combine("cp2.tar");
        await RunAsync([.. r, "checkpoint", "--export", again, restored]);
        var unstarted = await CreateRestoredAsync(again, "unstarted.log", 2);
        Assert.Single(ErofsMountsUnder(dir.Combine("root", "containers", unstarted)));
        await RunAsync([.. r, "rm", unstarted]);
        Assert.Empty(ErofsMountsUnder(dir.Path));
        Assert.Equal("CONTAINER_RUNNING", (await InspectAsync(r, restored)).GetProperty("status").GetProperty("state").GetString());
    }
}
