using Crest.Checkpoint;
using Crest.Checkpoint.Format;
using Crest.Linux;

namespace Crest.UnitTests;

public class CgroupLayoutTests
{
    private const string Hybrid = """
        25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
        31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
        32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
        33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
        36 31 0:31 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
        """;

    private const string Unified = """
        25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
        31 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
        """;

    private const string Legacy = """
        31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
        36 31 0:31 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
        """;

    [Theory]
    [InlineData(Hybrid, CgroupMode.Hybrid)]
    [InlineData(Unified, CgroupMode.Unified)]
    [InlineData(Legacy, CgroupMode.Legacy)]
    public void The_cgroup_mode_is_read_from_mountinfo(string mountInfo, CgroupMode expected) =>
        Assert.Equal(expected, CgroupLayout.FromMountInfo(mountInfo.Split('\n')));
}

public class MountInfoTests
{
    private const string Listing = """
        22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
        40 22 8:1 /srv /srv rw,relatime shared:3 - ext4 /dev/sda1 rw
        41 40 8:1 /srv/data /srv/data rw,relatime master:3 - ext4 /dev/sda1 rw
        42 40 0:50 / /srv/both rw,relatime shared:7 master:3 - tmpfs tmpfs rw
        43 22 0:51 / /with\040space rw,relatime shared:8 - tmpfs tmpfs rw
        """;

    [Theory]
    [InlineData("/etc/hosts", "/", MountPropagation.Private)]
    [InlineData("/srv", "/srv", MountPropagation.Shared)]
    [InlineData("/srv/volume/x", "/srv", MountPropagation.Shared)]
    [InlineData("/srv/data/x", "/srv/data", MountPropagation.Slave)]
    [InlineData("/srv/database", "/srv", MountPropagation.Shared)]
    [InlineData("/srv/both", "/srv/both", MountPropagation.Shared)]
    [InlineData("/with space/a", "/with space", MountPropagation.Shared)]
    public void The_mount_holding_a_path_and_its_propagation_come_from_mountinfo(string path, string mountPoint, MountPropagation propagation) =>
        Assert.Equal((mountPoint, propagation), MountInfo.PropagationOf(path, Listing.Split('\n')));
}

public class CriuVersionTests
{
    [Theory]
    [InlineData(4, 2, 1, false, 40201)]
    [InlineData(3, 16, 0, false, 31600)]
    [InlineData(4, 1, 1, true, 40200)]
    [InlineData(3, 17, 0, true, 31800)]
    public void Version_numbers_follow_the_go_criu_formula(int major, int minor, int sub, bool git, int expected) =>
        Assert.Equal(expected, CriuVersion.Number(major, minor, sub, git));

    [Theory]
    [InlineData(40200, "4.2.0")]
    [InlineData(31701, "3.17.1")]
    public void Version_numbers_format_back_to_dotted_versions(int number, string text) =>
        Assert.Equal(text, CriuVersion.Format(number));
}

public class ChildProcessTests
{
    [Theory]
    [InlineData(0x0000, 0)]
    [InlineData(0x0100, 1)]
    [InlineData(0x7f00, 127)]
    [InlineData(0x0009, 137)]
    [InlineData(0x000f, 143)]
    public void Wait_statuses_decode_to_shell_style_exit_codes(int status, int exitCode) =>
        Assert.Equal(exitCode, ChildProcess.DecodeWaitStatus(status));

    [Fact]
    public async Task A_spawned_child_gets_the_descriptors_it_was_given()
    {
        using var dir = new Crest.TestKit.TempDir();
        var output = dir.Combine("out");
        await using (var file = File.Create(output))
        {
            var child = ChildProcess.Spawn("/bin/sh", ["sh", "-c", "echo hello >&5; exit 3"],
                [ChildFd.Null(0), ChildFd.Null(1), ChildFd.Null(2), new ChildFd(5, (int)file.SafeFileHandle.DangerousGetHandle())]);

            Assert.Equal(3, await child.WaitAsync(TestContext.Current.CancellationToken));
        }

        Assert.Equal("hello\n", await File.ReadAllTextAsync(output, TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task A_spawned_child_starts_with_default_signal_handling()
    {
        using var dir = new Crest.TestKit.TempDir();
        var output = dir.Combine("status");
        await using (var file = File.Create(output))
        {
            var child = ChildProcess.Spawn("/bin/cat", ["cat", "/proc/self/status"],
                [ChildFd.Null(0), new ChildFd(1, (int)file.SafeFileHandle.DangerousGetHandle()), ChildFd.Null(2)]);
            Assert.Equal(0, await child.WaitAsync(TestContext.Current.CancellationToken));
        }

        var status = await File.ReadAllLinesAsync(output, TestContext.Current.CancellationToken);
        // .NET itself ignores SIGPIPE; a child must not inherit that (conmon and runc rely on default signals).
        Assert.Equal("SigIgn:\t0000000000000000", status.Single(l => l.StartsWith("SigIgn:", StringComparison.Ordinal)));
        Assert.Equal("SigBlk:\t0000000000000000", status.Single(l => l.StartsWith("SigBlk:", StringComparison.Ordinal)));
    }

    [Fact]
    public void A_missing_program_is_an_error_naming_it()
    {
        var e = Assert.Throws<IOException>(() => ChildProcess.Spawn("/nonexistent/prog", ["prog"], []));
        Assert.Contains("/nonexistent/prog", e.Message, StringComparison.Ordinal);
    }
}

public class RegularFileBeneathTests
{
    [Fact]
    public void Only_a_regular_file_reached_through_directories_beneath_the_root_has_a_length()
    {
        using var dir = new Crest.TestKit.TempDir();
        var root = dir.CreateDirectory("root");
        Directory.CreateDirectory(Path.Combine(root, "d"));
        File.WriteAllBytes(Path.Combine(root, "d", "f"), [1, 2, 3, 4, 5]);
        File.WriteAllBytes(dir.Combine("outside"), [1, 2, 3]);
        Directory.CreateSymbolicLink(Path.Combine(root, "linked-dir"), Path.Combine(root, "d"));
        File.CreateSymbolicLink(Path.Combine(root, "d", "linked-file"), "f");
        File.CreateSymbolicLink(Path.Combine(root, "out"), dir.Combine("outside"));

        Assert.Equal(5, FileKinds.RegularFileLengthBeneath(root, "d/f"));
        // A link anywhere on the way, a climb out, an absolute name, a directory, nothing: no length.
        Assert.Null(FileKinds.RegularFileLengthBeneath(root, "linked-dir/f"));
        Assert.Null(FileKinds.RegularFileLengthBeneath(root, "d/linked-file"));
        Assert.Null(FileKinds.RegularFileLengthBeneath(root, "out"));
        Assert.Null(FileKinds.RegularFileLengthBeneath(root, "../outside"));
        Assert.Null(FileKinds.RegularFileLengthBeneath(root, dir.Combine("outside")));
        Assert.Null(FileKinds.RegularFileLengthBeneath(root, "d"));
        Assert.Null(FileKinds.RegularFileLengthBeneath(root, "d/missing"));
    }
}
