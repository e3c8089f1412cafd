using Crest.Core;
using Crest.Runtime;
using Crest.TestKit;

namespace Crest.UnitTests;

/// <summary>The argv post-copy gives runc and CRIU, built from the typed options, and what the target reads back from CRIU's log.</summary>
public sealed class PostCopyCommandTests
{
    [Fact]
    public void A_lazy_checkpoint_leaves_the_container_running_serves_pages_and_reports_on_the_status_descriptor()
    {
        var options = new RuncCheckpointOptions { ContainerId = "c1", ImagePath = "/w/images", WorkPath = "/w", LazyPageServer = "127.0.0.1:4100", StatusFd = 3 };

        Assert.Equal(
            ["--root=/run/r", "checkpoint", "--leave-running", "--image-path", "/w/images", "--work-path", "/w", "--file-locks",
             "--lazy-pages", "--page-server", "127.0.0.1:4100", "--status-fd", "3", "c1"],
            options.Arguments("/run/r"));
        // A complete dump names none of it.
        Assert.DoesNotContain("--lazy-pages", (options with { LazyPageServer = null }).Arguments("/run/r"));
    }

    [Fact]
    public void A_post_copy_restore_asks_runc_for_lazy_pages_and_the_daemon_fetches_from_the_source()
    {
        var restore = new RuncRestoreOptions
        {
            Monitor = ConmonCreateOptions.ForContainer(RuntimeStoreConformance.Container("c1", "s1"), RuntimeStoreConformance.Sandbox("s1"),
                new ContainerBundle("c1", "/d", "/s", "/exits/c1", "/attach/c1")),
            ImagePath = "/d/restore/checkpoint",
            Criu = new CriuRestoreOptions { LazyPagesFrom = "10.0.0.1:4100" },
        };
        var daemon = new CriuLazyPagesOptions { ImagePath = "/d/restore/checkpoint", WorkPath = "/d/bundle", Address = "10.0.0.1", Port = 4100 };

        Assert.Equal(["--file-locks", "--lazy-pages"], restore.RuntimeFlags());
        Assert.Equal(
            ["/usr/sbin/criu", "lazy-pages", "--page-server", "--address", "10.0.0.1", "--port", "4100", "--images-dir", "/d/restore/checkpoint",
             "--work-dir", "/d/bundle", "--log-file", "lazy-pages.log", "-v4"],
            daemon.Arguments("/usr/sbin/criu"));
    }

    [Fact]
    public void The_pages_fetched_are_summed_over_every_restored_process_from_the_daemons_log()
    {
        using var dir = new TempDir("lazylog");
        var log = dir.Combine("lazy-pages.log");
        File.WriteAllLines(log,
        [
            "(00.345338) uffd: 1-12: uffd_copy: 0x7ffd46471000/4096",
            "(00.345362) uffd: 1--12: UFFD transferred pages: (16394/16394)",
            "(00.400000) uffd: 7-14: UFFD transferred pages: (6/8)",
        ]);

        Assert.Equal((16400L, 16402L), LazyPageTransfers.Progress(log));
        Assert.Equal((0L, 0L), LazyPageTransfers.Progress(dir.Combine("missing.log")));
    }
}
