using Crest.Checkpoint;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.UnitTests.Fakes;
using Microsoft.Extensions.Logging.Abstractions;

namespace Crest.UnitTests;

/// <summary>A migration target's side of the archive: what it takes, what it refuses, and that a refusal leaves nothing.</summary>
public sealed class MigrationServiceTests : IDisposable
{
    private readonly RuntimeHarness _h = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private sealed class Criu : ICriuProbe
    {
        public Task<CriuInfo> ProbeAsync(CancellationToken ct) => Task.FromResult(new CriuInfo("/usr/sbin/criu", "4.2.1", 40201, null, new CriuFeatures(false, true)));
    }

    private MigrationService Service(RestoreOptions restore) => new(
        new CheckpointService(_h.Containers, _h.Layout, new Criu(), new CheckpointOptions(), TimeProvider.System, NullLogger<CheckpointService>.Instance),
        _h.Containers, _h.Paths, restore, new Criu(), NullLogger<MigrationService>.Instance);

    private static async IAsyncEnumerable<ReadOnlyMemory<byte>> Chunks(int count, int size)
    {
        for (var i = 0; i < count; i++)
        {
            await Task.Yield();
            yield return new byte[size];
        }
    }

    [Fact]
    public async Task A_received_archive_is_stored_privately_and_dropped_by_its_token()
    {
        var service = Service(new RestoreOptions { ViaCreate = true });

        var (token, path, bytes) = await service.ReceiveAsync(Chunks(3, 1000), Ct);

        Assert.Equal(3000, bytes);
        Assert.Equal(3000, new FileInfo(path).Length);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        service.DropArchive(token);
        Assert.False(File.Exists(path));
    }

    [Fact]
    public async Task An_archive_over_the_restore_limit_is_refused_and_nothing_is_left()
    {
        var service = Service(new RestoreOptions { ViaCreate = true, Limits = new RestoreLimits { MaxArchiveBytes = 2500 } });

        var e = await Assert.ThrowsAsync<CrestException>(() => service.ReceiveAsync(Chunks(3, 1000), Ct));

        Assert.Equal(ErrorKind.ResourceExhausted, e.Kind);
        Assert.Contains("max_archive_bytes", e.Message, StringComparison.Ordinal);
        Assert.Empty(Directory.EnumerateFileSystemEntries(service.ArchiveDir));
    }

    [Fact]
    public async Task A_node_that_does_not_restore_through_create_refuses_to_be_a_target()
    {
        var service = Service(new RestoreOptions { ViaCreate = false });

        var e = await Assert.ThrowsAsync<CrestException>(() => service.ReceiveAsync(Chunks(1, 10), Ct));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains("via_create = true", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_freeze_that_fails_after_the_dump_resumes_the_container_and_holds_no_archive()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await _h.RecordRunningAsync("c1", pod.Id, Ct);
        var bundle = _h.Layout.Container(c.Id);
        Directory.CreateDirectory(Path.GetDirectoryName(bundle.ConfigJson)!);
        await File.WriteAllTextAsync(bundle.ConfigJson, """{"mounts": [], "annotations": {}}""", Ct);
        Directory.CreateDirectory(bundle.Upper);
        var service = Service(new RestoreOptions { ViaCreate = true });

        // The fake runtime's checkpoint writes no CRIU images, so the checkpoint fails after the dump left it frozen.
        var e = await Assert.ThrowsAsync<CrestException>(() => service.FreezeAsync(c.Id, TimeSpan.Zero, Ct));

        Assert.Contains("inventory.img", e.Message, StringComparison.Ordinal);

        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
        Assert.Contains("pause c1", _h.Runtimes.Calls);
        Assert.Equal("resume c1", _h.Runtimes.Calls.Last(call => call.Split(' ')[0] is "pause" or "resume"));
        Assert.Empty(Directory.EnumerateFileSystemEntries(service.ArchiveDir));
    }

    [Theory]
    [InlineData("../../etc/passwd")]
    [InlineData("0123456789abcdef0123456X")]
    public void A_token_this_node_did_not_hand_out_is_refused(string token)
    {
        var e = Assert.Throws<CrestException>(() => Service(new RestoreOptions()).DropArchive(token));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
    }

    public void Dispose() => _h.Dispose();
}
