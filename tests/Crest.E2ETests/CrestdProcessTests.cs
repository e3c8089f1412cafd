using Crest.TestKit;

namespace Crest.E2ETests;

public class CrestdProcessTests
{
    [Fact]
    public async Task Crestd_started_in_a_directory_tree_watches_only_its_exit_directory()
    {
        // systemd starts crestd in /. The web host's default watched appsettings.json under the working directory with
        // an inotify watch on every directory below it: the whole filesystem, and 1.4 s before the socket answered.
        using var dir = new Crest.TestKit.TempDir("crest-e2e-cwd");
        var cwd = dir.CreateDirectory("cwd");
        for (var i = 0; i < 100; i++)
        {
            Directory.CreateDirectory(Path.Combine(cwd, $"d{i}", "sub"));
        }

        await File.WriteAllTextAsync(Path.Combine(cwd, "appsettings.json"), "{}", TestContext.Current.CancellationToken);
        var config = CrestdProcess.WriteConfig(dir);
        await using var crestd = CrestdProcess.StartIn(cwd, null, "--config", config, "--root", dir.Combine("root"), "--state", dir.Combine("state"));
        await Crest.TestKit.UnixGrpc.WaitForCriAsync(crestd.Socket, TimeSpan.FromSeconds(30), () => crestd.Log);

        var watched = InotifyWatches(crestd.Process.Id);
        Assert.True(watched.Count <= 2, $"crestd holds {watched.Count} inotify watches (the exit directory is the one it needs): {string.Join(", ", watched.Take(5))}");
    }

    /// <summary>Every inotify watch a process holds, one line of /proc/PID/fdinfo each.</summary>
    private static List<string> InotifyWatches(int pid)
    {
        var watches = new List<string>();
        foreach (var fd in Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd"))
        {
            if (new FileInfo(fd).LinkTarget == "anon_inode:inotify")
            {
                watches.AddRange(File.ReadLines($"/proc/{pid}/fdinfo/{Path.GetFileName(fd)}").Where(l => l.StartsWith("inotify wd:", StringComparison.Ordinal)));
            }
        }

        return watches;
    }

    [Fact]
    public async Task Sigterm_stops_crestd_cleanly_and_removes_its_socket()
    {
        using var dir = new TempDir("crest-e2e");
        await using var crestd = await CrestdProcess.StartReadyAsync(dir);

        var exit = await crestd.StopAsync(signal: 15);

        Assert.Equal(0, exit);
        Assert.False(File.Exists(crestd.Socket));
        Assert.Contains("crestd stopped", crestd.Log, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Sigint_stops_crestd_cleanly()
    {
        using var dir = new TempDir("crest-e2e");
        await using var crestd = await CrestdProcess.StartReadyAsync(dir);

        Assert.Equal(0, await crestd.StopAsync(signal: 2));
    }

    [Fact]
    public async Task After_kill_9_a_new_crestd_replaces_the_stale_socket()
    {
        using var dir = new TempDir("crest-e2e");
        await using (var first = await CrestdProcess.StartReadyAsync(dir))
        {
            await first.StopAsync(signal: 9);
            Assert.True(File.Exists(first.Socket));
        }

        await using var second = await CrestdProcess.StartReadyAsync(dir);

        Assert.Contains("removed a stale socket file", second.Log, StringComparison.Ordinal);
        var (exit, _, stderr) = await Binaries.RunCrestAsync(["-r", second.Endpoint, "version"]);
        Assert.True(exit == 0, stderr);
    }

    [Fact]
    public async Task A_second_crestd_on_a_live_socket_exits_3_with_a_clear_error()
    {
        using var dir = new TempDir("crest-e2e");
        using var other = new TempDir("crest-e2e");
        await using var first = await CrestdProcess.StartReadyAsync(dir);
        await using var second = CrestdProcess.Start("--root", other.Combine("root"), "--state", other.Combine("state"), "--socket", first.Socket);

        await second.Process.WaitForExitAsync(TestContext.Current.CancellationToken);

        Assert.Equal(3, second.Process.ExitCode);
        Assert.Contains($"another server is listening on {first.Socket}", second.Log, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_broken_config_file_exits_2_naming_the_key()
    {
        using var dir = new TempDir("crest-e2e");
        var config = dir.Combine("config.toml");
        await File.WriteAllTextAsync(config, "[restore]\nvia_craete = true\n", TestContext.Current.CancellationToken);
        await using var crestd = CrestdProcess.Start("--config", config, "--root", dir.Combine("root"), "--state", dir.Combine("state"));

        await crestd.Process.WaitForExitAsync(TestContext.Current.CancellationToken);

        Assert.Equal(2, crestd.Process.ExitCode);
        Assert.Contains("unknown key restore.via_craete", crestd.Log, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Json_logs_are_one_object_per_line()
    {
        using var dir = new TempDir("crest-e2e");
        var config = CrestdProcess.WriteConfig(dir);
        await using var crestd = CrestdProcess.Start("--config", config, "--root", dir.Combine("root"), "--state", dir.Combine("state"), "--log-format", "json");
        await UnixGrpc.WaitForCriAsync(crestd.Socket, TimeSpan.FromSeconds(30), () => crestd.Log);
        await crestd.StopAsync();

        var serving = crestd.Log.Split('\n').Single(l => l.Contains("serving CRI v1", StringComparison.Ordinal));
        using var doc = System.Text.Json.JsonDocument.Parse(serving[serving.IndexOf('{', StringComparison.Ordinal)..]);
        Assert.Equal(1, doc.RootElement.GetProperty("EventId").GetInt32());
    }
}
