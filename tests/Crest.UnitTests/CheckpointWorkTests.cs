using Crest.Core;
using Crest.Linux;
using Crest.Runtime;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>Where a checkpoint's CRIU images go while the container is frozen: the page cache under its writeback threshold, else a tmpfs when the node has the memory.</summary>
public sealed class CheckpointWorkTests : IDisposable
{
    private const long MiB = 1L << 20;

    private readonly RuntimeHarness _h = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory]
    [InlineData(100 * MiB, 4096 * MiB, 2048 * MiB)] // fits: the tmpfs may take half of what is available
    [InlineData(1984 * MiB, 4096 * MiB, 2048 * MiB)] // exactly the half less the headroom
    [InlineData(1985 * MiB, 4096 * MiB, null)] // one MiB more: the disk
    [InlineData(100 * MiB, 0, null)] // nothing available (or unreadable): the disk
    public void The_images_go_to_memory_only_when_the_container_fits_in_half_of_what_is_available(long containerBytes, long availableBytes, long? limit)
    {
        Assert.Equal(limit, CheckpointWorkRule.MemoryLimit(CheckpointWorkMemory.Auto, (ulong)containerBytes, availableBytes));
        Assert.Equal(limit, CheckpointWorkRule.MemoryLimit(CheckpointWorkMemory.Tmpfs, (ulong)containerBytes, availableBytes));
        Assert.Null(CheckpointWorkRule.MemoryLimit(CheckpointWorkMemory.Never, (ulong)containerBytes, availableBytes));
    }

    [Theory]
    [InlineData(100 * MiB, 0, 400 * MiB, true)] // 100 + 64 headroom well under the threshold
    [InlineData(100 * MiB, 235 * MiB, 400 * MiB, true)] // 235 + 100 + 64 = 399: still under
    [InlineData(100 * MiB, 236 * MiB, 400 * MiB, false)] // one MiB more reaches it: writeback could throttle CRIU
    [InlineData(1024 * MiB, 0, 800 * MiB, false)] // a gigabyte never fits under 800 MiB
    [InlineData(100 * MiB, 0, 0, false)] // a threshold of 0 (unreadable, or a node that writes back at once)
    public void The_page_cache_takes_the_images_only_below_the_background_writeback_threshold(long containerBytes, long dirtyBytes, long thresholdBytes, bool pageCache)
    {
        var state = new DirtyPageCache(dirtyBytes, thresholdBytes);

        const long disk = 100L << 30;

        Assert.Equal(pageCache, CheckpointWorkRule.UsesPageCache(CheckpointWorkMemory.Auto, (ulong)containerBytes, state, 0, disk));
        Assert.False(CheckpointWorkRule.UsesPageCache(CheckpointWorkMemory.Tmpfs, (ulong)containerBytes, state, 0, disk));
        Assert.False(CheckpointWorkRule.UsesPageCache(CheckpointWorkMemory.Never, (ulong)containerBytes, state, 0, disk));
        // What other checkpoints still write there counts as dirty.
        Assert.False(CheckpointWorkRule.UsesPageCache(CheckpointWorkMemory.Auto, (ulong)containerBytes, state, thresholdBytes, disk));
        // A disk without room for the images (the page cache is written back there in the end): never the page cache.
        Assert.False(CheckpointWorkRule.UsesPageCache(CheckpointWorkMemory.Auto, (ulong)containerBytes, state, 0, containerBytes + CheckpointWorkRule.Headroom - 1));
    }

    [Fact]
    public void The_writeback_state_is_read_from_meminfo_and_the_vm_settings()
    {
        const string meminfo = "MemTotal:       24684256 kB\nMemFree:        18000000 kB\nMemAvailable:   22279932 kB\n"
            + "Active(file):     1000000 kB\nInactive(file):   1000000 kB\nDirty:               784 kB\nWriteback:            16 kB\n";

        var byRatio = MemoryInfo.DirtyPageCache(meminfo, backgroundBytes: 0, backgroundRatio: 10);
        var byBytes = MemoryInfo.DirtyPageCache(meminfo, backgroundBytes: 256 * MiB, backgroundRatio: 10);

        Assert.Equal(800L * 1024, byRatio.DirtyBytes);
        // 10 % of free plus the file LRU lists (20,000,000 kB), as the kernel counts dirtyable memory.
        Assert.Equal(20000000L * 1024 / 100 * 10, byRatio.BackgroundThresholdBytes);
        Assert.Equal(256 * MiB, byBytes.BackgroundThresholdBytes);
        Assert.Throws<CrestException>(() => MemoryInfo.DirtyPageCache("MemFree: 1 kB\n", 0, 10));
    }

    [Fact]
    public void MemAvailable_is_read_from_meminfo_in_bytes()
    {
        const string meminfo = "MemTotal:       24684256 kB\nMemFree:        18886660 kB\nMemAvailable:   22279932 kB\nBuffers:          123 kB\n";

        Assert.Equal(22279932L * 1024, MemoryInfo.AvailableBytes(meminfo));
        Assert.Throws<CrestException>(() => MemoryInfo.AvailableBytes("MemTotal: 1 kB\n"));
    }

    [Fact]
    public async Task A_small_container_checkpoints_into_a_private_tmpfs_sized_to_half_the_available_memory_and_removal_unmounts_it()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await _h.RecordRunningAsync("c1", pod.Id, Ct);
        _h.Linux.Cgroups[$"{pod.CgroupsPath}/crest-c1"] = new CgroupUsage(1, (ulong)(300 * MiB), (ulong)(300 * MiB), (ulong)(250 * MiB));
        _h.Linux.MemoryAvailable = 4096 * MiB;
        // The page cache is busy: 700 MiB dirty under an 800 MiB threshold.
        _h.Linux.PageCache = new DirtyPageCache(700 * MiB, 800 * MiB);
        var path = Path.Combine(_h.Layout.ContainerDir("c1"), "checkpoint-work-test");

        var work = await _h.Containers.PrepareCheckpointWorkAsync(c, path, CheckpointWorkMemory.Auto, Ct);

        Assert.True(work.InMemory);
        Assert.Equal(CheckpointWorkPlace.Tmpfs, work.Place);
        Assert.Equal(("tmpfs", $"size={2048 * MiB},mode=0700"), _h.Linux.MountedWith[path]);
        Assert.Contains(path, _h.Linux.MountsUnder(path));

        _h.Containers.RemoveCheckpointWork(path);

        Assert.Empty(_h.Linux.MountsUnder(path));
        Assert.False(Directory.Exists(path));
    }

    [Fact]
    public async Task Checkpoints_at_once_share_the_available_memory_and_a_removed_one_gives_its_share_back()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var big = await _h.RecordRunningAsync("c1", pod.Id, Ct);
        var small = await _h.RecordRunningAsync("c2", pod.Id, Ct);
        _h.Linux.Cgroups[$"{pod.CgroupsPath}/crest-c1"] = new CgroupUsage(1, (ulong)(1500 * MiB), 0, 0);
        _h.Linux.Cgroups[$"{pod.CgroupsPath}/crest-c2"] = new CgroupUsage(1, (ulong)(1300 * MiB), 0, 0);
        _h.Linux.MemoryAvailable = 4096 * MiB;
        _h.Linux.PageCache = new DirtyPageCache(0, 1000 * MiB);
        var first = Path.Combine(_h.Layout.ContainerDir("c1"), "checkpoint-work-first");
        var second = Path.Combine(_h.Layout.ContainerDir("c2"), "checkpoint-work-second");
        var third = Path.Combine(_h.Layout.ContainerDir("c2"), "checkpoint-work-third");

        var one = await _h.Containers.PrepareCheckpointWorkAsync(big, first, CheckpointWorkMemory.Auto, Ct);
        // 4096 - 1500 left: half of it (1298 MiB) cannot take 1300 MiB and the headroom.
        var two = await _h.Containers.PrepareCheckpointWorkAsync(small, second, CheckpointWorkMemory.Auto, Ct);
        _h.Containers.RemoveCheckpointWork(first);
        var three = await _h.Containers.PrepareCheckpointWorkAsync(small, third, CheckpointWorkMemory.Auto, Ct);

        Assert.True(one.InMemory);
        Assert.False(two.InMemory);
        Assert.True(three.InMemory);
    }

    [Fact]
    public async Task A_container_too_large_for_memory_or_a_node_set_to_never_checkpoints_onto_the_disk()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await _h.RecordRunningAsync("c1", pod.Id, Ct);
        _h.Linux.Cgroups[$"{pod.CgroupsPath}/crest-c1"] = new CgroupUsage(1, (ulong)(3000 * MiB), (ulong)(3000 * MiB), (ulong)(2900 * MiB));
        _h.Linux.MemoryAvailable = 4096 * MiB;
        var large = Path.Combine(_h.Layout.ContainerDir("c1"), "checkpoint-work-large");
        var never = Path.Combine(_h.Layout.ContainerDir("c1"), "checkpoint-work-never");

        var onDisk = await _h.Containers.PrepareCheckpointWorkAsync(c, large, CheckpointWorkMemory.Auto, Ct);
        var set = await _h.Containers.PrepareCheckpointWorkAsync(c, never, CheckpointWorkMemory.Never, Ct);

        Assert.False(onDisk.InMemory);
        Assert.False(set.InMemory);
        Assert.Equal(CheckpointWorkPlace.Disk, onDisk.Place);
        Assert.Equal(CheckpointWorkPlace.Disk, set.Place);
        Assert.True(Directory.Exists(large));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(large));
        Assert.DoesNotContain(large, _h.Linux.MountedWith.Keys);
        Assert.DoesNotContain(never, _h.Linux.MountedWith.Keys);
    }

    [Fact]
    public async Task Under_the_writeback_threshold_the_images_go_to_the_page_cache_and_checkpoints_at_once_count_each_other()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var first = await _h.RecordRunningAsync("c1", pod.Id, Ct);
        var second = await _h.RecordRunningAsync("c2", pod.Id, Ct);
        _h.Linux.Cgroups[$"{pod.CgroupsPath}/crest-c1"] = new CgroupUsage(1, (ulong)(300 * MiB), 0, 0);
        _h.Linux.Cgroups[$"{pod.CgroupsPath}/crest-c2"] = new CgroupUsage(1, (ulong)(300 * MiB), 0, 0);
        _h.Linux.MemoryAvailable = 4096 * MiB;
        _h.Linux.PageCache = new DirtyPageCache(100 * MiB, 700 * MiB);
        var one = Path.Combine(_h.Layout.ContainerDir("c1"), "checkpoint-work-one");
        var two = Path.Combine(_h.Layout.ContainerDir("c2"), "checkpoint-work-two");
        var three = Path.Combine(_h.Layout.ContainerDir("c2"), "checkpoint-work-three");
        var forced = Path.Combine(_h.Layout.ContainerDir("c2"), "checkpoint-work-forced");

        var a = await _h.Containers.PrepareCheckpointWorkAsync(first, one, CheckpointWorkMemory.Auto, Ct);
        // 100 dirty + 300 the first still writes + 300 + 64 headroom: over 700, so a tmpfs.
        var b = await _h.Containers.PrepareCheckpointWorkAsync(second, two, CheckpointWorkMemory.Auto, Ct);
        _h.Containers.RemoveCheckpointWork(one);
        _h.Containers.RemoveCheckpointWork(two);
        var c = await _h.Containers.PrepareCheckpointWorkAsync(second, three, CheckpointWorkMemory.Auto, Ct);
        var d = await _h.Containers.PrepareCheckpointWorkAsync(second, forced, CheckpointWorkMemory.Tmpfs, Ct);

        Assert.Equal(CheckpointWorkPlace.PageCache, a.Place);
        Assert.False(a.InMemory);
        Assert.DoesNotContain(one, _h.Linux.MountedWith.Keys);
        Assert.Equal(CheckpointWorkPlace.Tmpfs, b.Place);
        Assert.Equal(CheckpointWorkPlace.PageCache, c.Place);
        Assert.Equal(CheckpointWorkPlace.Tmpfs, d.Place);
        Assert.Equal("the page cache (under the writeback threshold)", c.Describe());
        _h.Linux.DiskFree = 200 * MiB; // the disk could not take the page cache's 300 MiB when written back
        var full = await _h.Containers.PrepareCheckpointWorkAsync(first, Path.Combine(_h.Layout.ContainerDir("c1"), "checkpoint-work-full"), CheckpointWorkMemory.Auto, Ct);
        Assert.Equal(CheckpointWorkPlace.Tmpfs, full.Place);
    }

    [Fact]
    public async Task An_unreadable_writeback_state_leaves_the_choice_to_the_tmpfs_rule()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await _h.RecordRunningAsync("c1", pod.Id, Ct);
        _h.Linux.Cgroups[$"{pod.CgroupsPath}/crest-c1"] = new CgroupUsage(1, (ulong)(100 * MiB), 0, 0);
        _h.Linux.MemoryAvailable = 4096 * MiB;
        _h.Linux.PageCache = null;

        var work = await _h.Containers.PrepareCheckpointWorkAsync(c, Path.Combine(_h.Layout.ContainerDir("c1"), "checkpoint-work-x"), CheckpointWorkMemory.Auto, Ct);

        Assert.Equal(CheckpointWorkPlace.Tmpfs, work.Place);
    }

    public void Dispose() => _h.Dispose();
}
