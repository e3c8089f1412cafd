using System.Formats.Tar;
using System.IO.Compression;
using System.Text;
using Crest.TestKit;

using static Crest.E2ETests.CheckpointSteps;

namespace Crest.E2ETests;

/// <summary>
/// Hostile archives through crestd: each is a real Crest checkpoint with one thing made hostile. CreateContainer
/// refuses it with an error that names the problem, no container is left, nothing stays in the restore staging
/// area and nothing outside it is touched. The unmodified archive restores afterwards.
/// </summary>
public partial class CheckpointCliTests
{
    private const long DiffByteCap = 64L << 20;

    [Fact]
    public async Task Hostile_archives_are_refused_at_create_and_touch_nothing_then_the_original_restores()
    {
        RequireCheckpointTools();
        using var dir = new TempDir("crest-e2e-hostile");
        await using var s = await StartAsync(dir, RestoreOn + $"max_archive_entries = 2000\nmax_rootfs_diff_bytes = {DiffByteCap}\nmax_rootfs_diff_entries = 1000\n");
        var crestd = s.Crestd;
        var r = s.R;
        var (podId, id) = await RunCounterAsync(s);
        await CountPassesAsync(dir.Combine("logs-counter", "counter.log"), 3);
        await RunAsync([.. r, "exec", "-s", id, "/bin/sh", "-c", "touch /root/testfile && rm /etc/motd"]);
        var archive = dir.Combine("cp.tar");
        await RunAsync([.. r, "checkpoint", "--export", archive, id]);
        var lastBefore = LastCount(await File.ReadAllTextAsync(dir.Combine("logs-counter", "counter.log"), Ct));
        await RunAsync([.. r, "stop", id]);
        await RunAsync([.. r, "rm", id]);

        var victim = dir.Combine("victim");
        await File.WriteAllTextAsync(victim, "victim", Ct);
        var planted = dir.Combine("planted");
        var depth = string.Concat(Enumerable.Repeat("../", 16));
        var zeros = dir.Combine("zeros");
        await using (var sparse = File.Create(zeros))
        {
            sparse.SetLength(4 * DiffByteCap);
        }

        var cases = new (string Name, string Expected, Func<string, Task> Make)[]
        {
            ("log-symlink", "container.log", dest => RewriteAsync(archive, dest, "container.log", t =>
                t.WriteEntry(new PaxTarEntry(TarEntryType.SymbolicLink, "container.log") { LinkName = victim }))),
            ("log-hardlink", "container.log", dest => RewriteAsync(archive, dest, "container.log", t =>
                t.WriteEntry(new PaxTarEntry(TarEntryType.HardLink, "container.log") { LinkName = victim }))),
            ("device", "checkpoint/tty.img", dest => RewriteAsync(archive, dest, more: t =>
                t.WriteEntry(new PaxTarEntry(TarEntryType.CharacterDevice, "checkpoint/tty.img") { DeviceMajor = 1, DeviceMinor = 3, Mode = (UnixFileMode)0x1B6 }))),
            ("dotdot-entry", "..", dest => RewriteAsync(archive, dest, more: t => AddBytes(t, depth + planted.TrimStart('/'), "pwned"u8.ToArray()))),
            ("absolute-entry", planted, dest => RewriteAsync(archive, dest, more: t => AddBytes(t, planted, "pwned"u8.ToArray()))),
            ("deleted-dotdot", "failed to read \"deleted.files\"", dest => RewriteAsync(archive, dest, "deleted.files", t =>
                AddBytes(t, "deleted.files", Encoding.UTF8.GetBytes($"[\"/etc/motd\", \"/{depth}{victim.TrimStart('/')}\"]")))),
            ("entry-count", "more than 2000 entries", dest => RewriteAsync(archive, dest, more: t =>
            {
                for (var i = 0; i < 2100; i++)
                {
                    AddBytes(t, $"checkpoint/extra-{i}.img", [1]);
                }
            })),
            ("truncated", "cp-truncated", async dest =>
            {
                var bytes = await File.ReadAllBytesAsync(archive, Ct);
                await File.WriteAllBytesAsync(dest, bytes[..(bytes.Length / 2 + 100)], Ct);
            }),
            ("diff-bomb", $"max_rootfs_diff_bytes = {DiffByteCap}", dest => RewriteAsync(archive, dest, "rootfs-diff.tar", t =>
                AddBytes(t, "rootfs-diff.tar", GzipTar(w => w.WriteEntry(zeros, "root/zeros"))))),
            ("diff-entries", "max_rootfs_diff_entries = 1000", dest => RewriteAsync(archive, dest, "rootfs-diff.tar", t =>
                AddBytes(t, "rootfs-diff.tar", GzipTar(w =>
                {
                    for (var i = 0; i < 1100; i++)
                    {
                        w.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, $"root/f{i}") { DataStream = new MemoryStream([1]) });
                    }
                })))),
        };
        var jsonCases = new[] { "config.dump", "spec.dump", "status.dump", "bind.mounts", "deleted.files" }
            .Select(file => ($"json-{file}", $"failed to read \"{file}\"", (Func<string, Task>)(dest => RewriteAsync(archive, dest, file, t => AddBytes(t, file, "{\"not\": json"u8.ToArray())))));

        var failures = new List<string>();
        foreach (var (name, expected, make) in cases.Concat(jsonCases))
        {
            var hostile = dir.Combine($"cp-{name}.tar");
            await make(hostile);
            var config = await WriteRestoreConfigAsync(dir, name, hostile);
            var create = await Binaries.RunCrestAsync([.. r, "create", podId, config, s.PodConfig]);

            if (create.ExitCode == 0 || !create.Stderr.Contains(expected, StringComparison.Ordinal))
            {
                failures.Add($"{name}: exit {create.ExitCode}, expected \"{expected}\" in: {create.Stderr.Trim()}");
            }

            Assert.Equal("", await RunAsync([.. r, "ps", "-a", "-q"]));
            var staging = dir.Combine("root", "restores");
            Assert.True(!Directory.Exists(staging) || !Directory.EnumerateFileSystemEntries(staging).Any(), $"{name} left {string.Join(", ", Directory.EnumerateFileSystemEntries(staging))}");
            Assert.Equal("victim", await File.ReadAllTextAsync(victim, Ct));
            Assert.False(File.Exists(planted), $"{name} planted a file outside the staging dir");
        }

        Assert.True(failures.Count == 0, string.Join("\n", failures));

        // A base image that cannot be pulled: a registry port where nothing listens gives a clear error at once; a
        // registry that accepts and never answers holds the pull until the caller's deadline, and the request it got
        // asks for the manifest by digest. Either way nothing is left behind and crestd goes on serving.
        using var blackHole = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        blackHole.Start();
        // Filled by the accept loop while the test goes on (a client may retry), so a concurrent collection.
        var held = new System.Collections.Concurrent.ConcurrentQueue<System.Net.Sockets.TcpClient>();
        var requests = new System.Collections.Concurrent.ConcurrentQueue<string>();
        _ = Task.Run(async () =>
        {
            while (true)
            {
                var client = await blackHole.AcceptTcpClientAsync(Ct);
                held.Enqueue(client);
                var buffer = new byte[4096];
                var n = await client.GetStream().ReadAsync(buffer, Ct);
                requests.Enqueue(Encoding.ASCII.GetString(buffer, 0, n));
            }
        }, Ct);
        int deadPort;
        using (var probe = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0))
        {
            probe.Start();
            deadPort = ((System.Net.IPEndPoint)probe.LocalEndpoint).Port;
        }

        var missingDigest = "sha256:" + new string('a', 64);
        foreach (var (name, port, deadline) in new[] { ("dead-registry", deadPort, "120s"), ("silent-registry", ((System.Net.IPEndPoint)blackHole.LocalEndpoint).Port, "5s") })
        {
            var repository = $"127.0.0.1:{port}/e2e/busybox";
            var moved = dir.Combine($"cp-{name}.tar");
            await RewriteAsync(archive, moved, "config.dump", t =>
            {
                var config = System.Text.Json.Nodes.JsonNode.Parse(ReadEntry(archive, "config.dump"))!;
                config["rootfsImageRef"] = $"{repository}@{missingDigest}";
                config["rootfsImageName"] = $"{repository}:v1";
                AddBytes(t, "config.dump", Encoding.UTF8.GetBytes(config.ToJsonString()));
            });
            var config = await WriteRestoreConfigAsync(dir, name, moved);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var create = await Binaries.RunCrestAsync([.. r, "-t", deadline, "create", podId, config, s.PodConfig]);
            Assert.NotEqual(0, create.ExitCode);
            Assert.True(create.Stderr.Contains(name == "dead-registry" ? $"{repository}@{missingDigest}" : "did not answer within 5 s", StringComparison.Ordinal), create.Stderr);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(90), $"{name}: the failed pull took {clock.Elapsed}");

            // The server side stops at the deadline too: the create is undone.
            var staging = dir.Combine("root", "restores");
            await Eventually.UntilAsync(() => !Directory.Exists(staging) || !Directory.EnumerateFileSystemEntries(staging).Any(),
                $"{name}: the undone create to remove its staging dir in {staging}", TimeSpan.FromSeconds(30), Ct);
            Assert.Equal("", await RunAsync([.. r, "ps", "-a", "-q"]));
        }

        Assert.Contains(requests, q => q.StartsWith($"GET /v2/e2e/busybox/manifests/{missingDigest} ", StringComparison.Ordinal));
        Assert.DoesNotContain(requests, q => q.Contains("/manifests/v1", StringComparison.Ordinal));
        // No more connections once the listener stops; then every held one is closed.
        blackHole.Stop();
        while (held.TryDequeue(out var c))
        {
            c.Dispose();
        }

        // The unmodified archive still restores, and the process goes on from where it was.
        var good = await WriteRestoreConfigAsync(dir, "good", archive);
        var restored = await RunAsync([.. r, "create", podId, good, s.PodConfig]);
        await RunAsync([.. r, "start", restored]);
        var log = await WaitForCountAsync(dir.Combine("logs-counter", "good.log"), lastBefore + 3);
        Assert.True(LastCount(log) > lastBefore + 2, crestd.Log);
        Assert.NotEqual(0, (await Binaries.RunCrestAsync([.. r, "exec", "-s", restored, "/bin/sh", "-c", "test -e /etc/motd"])).ExitCode);
    }

    private static async Task<string> WriteRestoreConfigAsync(TempDir dir, string name, string archive)
    {
        var path = dir.Combine($"restore-{name}.json");
        await File.WriteAllTextAsync(path, $$"""
            {"metadata": {"name": "counter", "attempt": 1}, "image": {"image": "{{archive}}"},
             "labels": {"io.kubernetes.container.name": "counter"}, "log_path": "{{name}}.log", "linux": {} }
            """, Ct);
        return path;
    }

    /// <summary>A hostile copy of <paramref name="source"/>: the entry <paramref name="replace"/> (if any) swapped for what <paramref name="write"/> writes, then <paramref name="more"/>.</summary>
    private static async Task RewriteAsync(string source, string destination, string? replace = null, Action<TarWriter>? write = null, Action<TarWriter>? more = null)
    {
        await using var input = File.OpenRead(source);
        using var reader = new TarReader(input);
        await using var output = File.Create(destination);
        using var writer = new TarWriter(output, TarEntryFormat.Pax);
        var replaced = false;
        while (await reader.GetNextEntryAsync(copyData: true, Ct) is { } entry)
        {
            if (entry.Name == replace)
            {
                write!(writer);
                replaced = true;
            }
            else
            {
                await writer.WriteEntryAsync(entry, Ct);
            }
        }

        if (replace is not null && !replaced)
        {
            // Not in the archive (a container without bind mounts may have no bind.mounts): added instead.
            write!(writer);
        }

        more?.Invoke(writer);
    }

    private static byte[] ReadEntry(string archive, string name)
    {
        using var input = File.OpenRead(archive);
        using var reader = new TarReader(input);
        while (reader.GetNextEntry(copyData: true) is { } entry)
        {
            if (entry.Name == name)
            {
                using var ms = new MemoryStream();
                entry.DataStream!.CopyTo(ms);
                return ms.ToArray();
            }
        }

        throw new InvalidOperationException($"{archive} has no {name}");
    }

    private static void AddBytes(TarWriter t, string name, byte[] content) =>
        t.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, name) { DataStream = new MemoryStream(content), Mode = (UnixFileMode)0x180 });

    private static byte[] GzipTar(Action<TarWriter> write)
    {
        using var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, CompressionLevel.Fastest, leaveOpen: true))
        using (var w = new TarWriter(gz, TarEntryFormat.Pax))
        {
            write(w);
        }

        return ms.ToArray();
    }
}
