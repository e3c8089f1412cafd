using Crest.TestKit;

namespace Crest.E2ETests;

public class CrestdProcessTests
{
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
