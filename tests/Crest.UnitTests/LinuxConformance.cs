using Crest.Core;
using Crest.Linux;
using Crest.TestKit;
using Crest.UnitTests.Fakes;

namespace Crest.UnitTests;

/// <summary>The checks of <see cref="ILinux"/> that need no privilege, passed by the real syscalls and the recording fake alike.</summary>
public abstract class LinuxConformance : IDisposable
{
    private readonly TempDir _dir = new();

    protected abstract ILinux Create();

    [Fact]
    public void This_process_is_alive_and_a_pid_that_cannot_exist_is_not()
    {
        var linux = Create();

        Assert.True(linux.IsAlive(Environment.ProcessId));
        Assert.False(linux.IsAlive(0));
        Assert.False(linux.IsAlive(999_999_999));
        Assert.False(linux.Kill(999_999_999, 0));
    }

    [Fact]
    public void Nothing_is_mounted_under_a_fresh_directory()
    {
        Assert.Empty(Create().MountsUnder(_dir.CreateDirectory("fresh")));
    }

    [Fact]
    public void A_cgroup_that_does_not_exist_has_no_counters()
    {
        Assert.Null(Create().CgroupUsage("/crest-unit-test-no-such-cgroup/crest-c1"));
    }

    [Fact]
    public void A_process_that_does_not_exist_has_no_interface_counters()
    {
        Assert.Null(Create().InterfaceCounters(999_999_999, "eth0"));
    }

    [Fact]
    public void The_page_cache_has_a_background_writeback_threshold_and_a_dirty_count()
    {
        var state = Create().DirtyPageCache();

        // Every node writes back at some point: a positive threshold (the kernel's default is 10 % of dirtyable memory).
        Assert.True(state.BackgroundThresholdBytes > 0, $"threshold {state.BackgroundThresholdBytes}");
        Assert.True(state.DirtyBytes >= 0, $"dirty {state.DirtyBytes}");
        Assert.False(state.Takes(long.MaxValue / 4));
    }

    [Fact]
    public void A_port_nobody_listens_on_has_no_listener_to_change_and_says_so()
    {
        using var bound = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        bound.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        var port = ((System.Net.IPEndPoint)bound.LocalEndPoint!).Port;

        // Bound but not listening.
        Assert.Contains($"holds a TCP socket listening on port {port}", Create().SetListenerNoDelay(Environment.ProcessId, port), StringComparison.Ordinal);
    }

    [Fact]
    public void The_node_has_a_host_name()
    {
        Assert.False(string.IsNullOrWhiteSpace(Create().HostName()));
    }

    [Fact]
    public void Saving_shared_memory_from_a_missing_ipc_namespace_fails_and_leaves_no_image()
    {
        var output = Path.Combine(_dir.CreateDirectory("shm"), "shm.img");

        var e = Assert.Throws<CrestException>(() => Create().SaveSysVSharedMemory(Path.Combine(_dir.CreateDirectory("ns"), "ipc"), output, CancellationToken.None));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.False(File.Exists(output));
    }

    public void Dispose()
    {
        _dir.Dispose();
        GC.SuppressFinalize(this);
    }
}

public sealed class LinuxSyscallsTests : LinuxConformance
{
    protected override ILinux Create() => new LinuxSyscalls();

    [Fact]
    public void Interface_counters_are_read_from_net_dev()
    {
        string[] netDev =
        [
            "Inter-|   Receive                                                |  Transmit",
            " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed",
            "    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0",
            "  eth0:    5000      40    0    0    0     0          0         0     3000      30    0    0    0     0       0          0",
        ];

        Assert.Equal((5000UL, 3000UL), LinuxSyscalls.ParseInterfaceCounters(netDev, "eth0"));
        Assert.Null(LinuxSyscalls.ParseInterfaceCounters(netDev, "eth1"));
    }

    [Fact]
    public void Only_the_listener_on_the_port_asked_for_changes_and_an_ipv6_one_is_found_too()
    {
        using var other = Listen(out var otherPort);
        using var listener6 = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetworkV6, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        listener6.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.IPv6Loopback, 0));
        listener6.Listen(1);
        var port6 = ((System.Net.IPEndPoint)listener6.LocalEndPoint!).Port;

        Assert.Null(Create().SetListenerNoDelay(Environment.ProcessId, port6));

        Assert.True(listener6.NoDelay);
        Assert.False(other.NoDelay);
        Assert.NotEqual(otherPort, port6);
    }

    [Fact]
    public async Task Nagle_turned_off_on_a_listener_of_this_process_holds_for_the_connections_it_accepts_afterwards()
    {
        using var listener = Listen(out var port);
        Assert.False(listener.NoDelay);

        // Found through /proc and changed through a duplicate of the descriptor, as for CRIU's page server.
        Assert.Null(Create().SetListenerNoDelay(Environment.ProcessId, port));

        Assert.True(listener.NoDelay);
        using var client = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        await client.ConnectAsync(System.Net.IPAddress.Loopback, port, TestContext.Current.CancellationToken);
        using var accepted = await listener.AcceptAsync(TestContext.Current.CancellationToken);
        Assert.True(accepted.NoDelay);
        Assert.False(client.NoDelay);
    }

    [Fact]
    public void A_listener_outside_the_named_process_tree_is_left_alone()
    {
        using var listener = Listen(out var port);
        using var other = System.Diagnostics.Process.Start("sleep", "30");
        try
        {
            // The port is listened on, by this process, which is not in sleep's tree.
            var why = Create().SetListenerNoDelay(other.Id, port);

            Assert.Contains($"no process in the tree of process {other.Id}", why, StringComparison.Ordinal);
            Assert.False(listener.NoDelay);
        }
        finally
        {
            other.Kill();
            other.WaitForExit();
        }
    }

    private static System.Net.Sockets.Socket Listen(out int port)
    {
        var listener = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        listener.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        listener.Listen(1);
        port = ((System.Net.IPEndPoint)listener.LocalEndPoint!).Port;
        return listener;
    }
}

public sealed class RecordingLinuxTests : LinuxConformance
{
    protected override ILinux Create() => new RecordingLinux();
}
