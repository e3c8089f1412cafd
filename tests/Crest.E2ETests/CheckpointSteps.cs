using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Crest.TestKit;

namespace Crest.E2ETests;

/// <summary>The steps the checkpoint/restore E2E tests share: crest calls, pod configs, the counter's log, peers' logs.</summary>
internal static partial class CheckpointSteps
{
    /// <summary>The sandbox image ContainerdPeer's config pins.</summary>
    public const string PauseName = "localhost/crest-bench/pause:v1";

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static async Task<string> WritePodAsync(TempDir dir, string name, string uid)
    {
        var pod = dir.Combine($"pod-{name}.json");
        await File.WriteAllTextAsync(pod, $$"""
            {"metadata": {"name": "{{name}}", "uid": "{{uid}}", "namespace": "e2e", "attempt": 1},
             "hostname": "{{name}}", "log_directory": "{{dir.CreateDirectory("logs-" + name)}}", "linux": {} }
            """, Ct);
        return pod;
    }

    /// <summary>Imports <see cref="TestImages.BusyboxRootfs"/> through crest as localhost/e2e/busybox:v1.</summary>
    public static async Task ImportBusyboxAsync(TempDir dir, string[] r, bool motdAndRoot = false)
    {
        var rootfs = dir.Combine("rootfs.tar");
        await using (var f = File.Create(rootfs))
        await using (var t = new System.Formats.Tar.TarWriter(f, System.Formats.Tar.TarEntryFormat.Pax))
        {
            TestImages.BusyboxRootfs(t, motdAndRoot);
        }

        await RunAsync([.. r, "image", "import", rootfs, "localhost/e2e/busybox:v1"]);
    }

    /// <summary>Runs crest and fails the test unless it exits 0; returns its trimmed output.</summary>
    public static async Task<string> RunAsync(string[] args)
    {
        var result = await Binaries.RunCrestAsync(args);
        Assert.True(result.ExitCode == 0, $"crest {string.Join(' ', args)} failed ({result.ExitCode}): {result.Stderr}");
        return result.Stdout.Trim();
    }

    public static async Task<JsonElement> InspectAsync(string[] r, string id)
    {
        using var doc = JsonDocument.Parse(await RunAsync([.. r, "inspect", id]));
        return doc.RootElement.Clone();
    }

    /// <summary>The highest "count N" in a CRI log.</summary>
    public static int LastCount(string log) =>
        CountLine().Matches(log).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).DefaultIfEmpty(0).Max();

    /// <summary>The log once its counter passed <paramref name="count"/>, or as it is after 20 s (a loaded 2-core machine is slow).</summary>
    public static Task<string> WaitForCountAsync(string logFile, int count) =>
        Eventually.LastAsync(() => ReadLogAsync(logFile), log => LastCount(log) > count, ct: Ct);

    /// <summary>
    /// Waits until the counter in <paramref name="logFile"/> passes <paramref name="count"/> and returns the log; fails
    /// naming the log, <paramref name="why"/> (what it means if it never does) and the log's last lines.
    /// </summary>
    public static Task<string> CountPassesAsync(string logFile, int count, string why = "") =>
        Eventually.UntilAsync(() => ReadLogAsync(logFile), log => LastCount(log) > count,
            $"the counter in {logFile} to pass {count}{(why.Length > 0 ? " (" + why + ")" : "")}", describe: Tail, ct: Ct);

    /// <summary>A CRI log as it is now; empty before its first line.</summary>
    public static async Task<string> ReadLogAsync(string logFile) => File.Exists(logFile) ? await File.ReadAllTextAsync(logFile, Ct) : "";

    /// <summary>A container's state as crest inspect shows it (CONTAINER_RUNNING, CONTAINER_EXITED, ...).</summary>
    public static async Task<string> StateAsync(string[] r, string id) =>
        (await InspectAsync(r, id)).GetProperty("status").GetProperty("state").GetString()!;

    /// <summary>Waits until the container's state is <paramref name="state"/>; fails naming the container and the state it was in.</summary>
    public static Task WaitForStateAsync(string[] r, string id, string state) =>
        Eventually.UntilAsync(() => StateAsync(r, id), s => s == state, $"container {id} to be {state}", describe: s => s, ct: Ct);

    private static string Tail(string log) => log[^Math.Min(400, log.Length)..];

    [GeneratedRegex(@"stdout F count (\d+)")]
    public static partial Regex CountLine();

    /// <summary>Runs a host tool; its exit code and stdout+stderr.</summary>
    public static async Task<(int ExitCode, string Output)> Tool(string program, params string[] args)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }

        using var p = Process.Start(start)!;
        var stdout = p.StandardOutput.ReadToEndAsync(Ct);
        var stderr = p.StandardError.ReadToEndAsync(Ct);
        await p.WaitForExitAsync(Ct);
        return (p.ExitCode, await stdout + await stderr);
    }

    /// <summary>The pause image containerd's test config pins: catatonit from the host as one layer, named for ctr import.</summary>
    public static string WritePauseArchive(TempDir dir, string catatonit)
    {
        var layout = dir.CreateDirectory("pause-layout");
        var pause = File.ReadAllBytes(catatonit);
        TestImages.WriteLayout(layout, [new TestLayer(LayerCompression.Gzip, t => TestImages.File(t, "pause", pause, mode: 0x1ED))], "v1",
            config => config["config"]!["Cmd"] = new JsonArray("/pause", "-P"));
        var indexPath = Path.Combine(layout, "index.json");
        var index = JsonNode.Parse(File.ReadAllText(indexPath))!;
        index["manifests"]![0]!["annotations"] = new JsonObject
        {
            ["io.containerd.image.name"] = PauseName,
            ["org.opencontainers.image.ref.name"] = PauseName,
        };
        File.WriteAllText(indexPath, index.ToJsonString());
        var archive = dir.Combine("pause.tar");
        TestImages.TarDirectory(layout, archive);
        return archive;
    }

    /// <summary>containerd's recent warnings and errors, for failure messages.</summary>
    public static string ContainerdLog(ContainerdPeer peer)
    {
        using var f = new FileStream(peer.LogFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(f);
        var lines = reader.ReadToEnd().Split('\n');
        return string.Join('\n', lines.Where(l => l.Contains("level=error", StringComparison.Ordinal) || l.Contains("level=warn", StringComparison.Ordinal)).TakeLast(20));
    }

    /// <summary>CRIU's restore log, kept in the bundle until RemoveContainer.</summary>
    public static string RestoreLog(TempDir dir, string id)
    {
        var path = dir.Combine("root", "containers", id, "bundle", "restore.log");
        return File.Exists(path) ? string.Join('\n', File.ReadAllLines(path).TakeLast(30)) : $"(no {path})";
    }
}
