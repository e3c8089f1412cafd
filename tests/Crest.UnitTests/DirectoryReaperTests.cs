using Crest.Core;
using Crest.Runtime;
using Crest.TestKit;
using Crest.UnitTests.Fakes;
using Microsoft.Extensions.Logging.Abstractions;

namespace Crest.UnitTests;

/// <summary>Removed directories leave their place at once and are deleted behind the call; a mounted tree is never walked into.</summary>
public sealed class DirectoryReaperTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly RecordingLinux _linux = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private CrestPaths Paths => new(_dir.Combine("root"), _dir.Combine("state"), _dir.Combine("state/crest.sock"));

    [Fact]
    public async Task A_discarded_directory_is_gone_from_its_place_at_once_and_deleted_in_the_background()
    {
        await using var reaper = new DirectoryReaper(Paths, _linux, NullLogger<DirectoryReaper>.Instance);
        var dir = Tree("containers/c1", files: 200);

        reaper.Discard(dir);

        Assert.False(Directory.Exists(dir));
        await reaper.IdleAsync().WaitAsync(TimeSpan.FromSeconds(10), Ct);
        Assert.Empty(Directory.EnumerateFileSystemEntries(Paths.Trash));
    }

    [Fact]
    public async Task A_directory_with_a_mount_below_it_is_kept_rather_than_walked_into()
    {
        var mounted = Tree("trash/c2-0123", files: 1);
        _linux.Mount("overlay", Path.Combine(mounted, "rootfs"), "overlay", Crest.Linux.MountOptions.None, null);

        await using (var reaper = new DirectoryReaper(Paths, _linux, NullLogger<DirectoryReaper>.Instance))
        {
            await reaper.IdleAsync().WaitAsync(TimeSpan.FromSeconds(10), Ct);
        }

        Assert.True(File.Exists(Path.Combine(mounted, "f0")));
    }

    [Fact]
    public async Task What_a_stopped_crestd_left_in_the_trash_is_deleted_at_the_next_start()
    {
        var left = Tree("trash/c3-0123", files: 3);

        await using (var reaper = new DirectoryReaper(Paths, _linux, NullLogger<DirectoryReaper>.Instance))
        {
            reaper.Discard(Tree("containers/c4", files: 1));
            await reaper.IdleAsync().WaitAsync(TimeSpan.FromSeconds(10), Ct);
        }

        Assert.False(Directory.Exists(left));
        Assert.Empty(Directory.EnumerateFileSystemEntries(Paths.Trash));
    }

    private string Tree(string relative, int files)
    {
        var dir = Path.Combine(Paths.Root, relative);
        Directory.CreateDirectory(Path.Combine(dir, "upper", "etc"));
        for (var i = 0; i < files; i++)
        {
            File.WriteAllText(Path.Combine(dir, $"f{i}"), "x");
        }

        return dir;
    }

    public void Dispose() => _dir.Dispose();
}
