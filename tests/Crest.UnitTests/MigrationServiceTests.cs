using Crest.Checkpoint;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Runtime;
using Crest.UnitTests.Fakes;
using Microsoft.Extensions.Logging.Abstractions;

namespace Crest.UnitTests;

/// <summary>A migration target's side of the archive: what it takes, what it refuses, and that a refusal leaves nothing.</summary>
public sealed partial class MigrationServiceTests : IDisposable
{
    private readonly RuntimeHarness _h;

    /// <summary>The registry the node's image service pushes to (crest migrate --via).</summary>
    private readonly MemoryRegistry _registry = new();

    private readonly IptablesRules _commands = new();

    /// <summary>iptables as the lock uses it: -I adds a rule, -D removes one or fails when there is none.</summary>
    private sealed class IptablesRules : ICommandRunner
    {
        public List<string> Lines { get; } = [];

        public List<string> Active { get; } = [];

        public Task<CommandResult> RunAsync(CommandLine command, CancellationToken ct)
        {
            var line = command.ToString();
            Lines.Add(line);
            var rule = line.Replace(" -I ", " ", StringComparison.Ordinal).Replace(" -D ", " ", StringComparison.Ordinal);
            if (line.Contains(" -I ", StringComparison.Ordinal))
            {
                Active.Add(rule);
                return Task.FromResult(new CommandResult(0, "", ""));
            }

            return Task.FromResult(Active.Remove(rule) ? new CommandResult(0, "", "") : new CommandResult(1, "", "iptables: Bad rule (does a matching rule exist in that chain?)."));
        }
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private readonly PageTransferIdentities _identities;

    public MigrationServiceTests()
    {
        _h = new RuntimeHarness(registry: _registry);
        // CRIU's TLS check through the same fake runner: it answers as a CRIU built with GnuTLS would not object.
        _identities = new PageTransferIdentities(Path.Combine(_h.Paths.Root, "migrations", "page-tls"), _commands, "/bin/sh");
    }

    private sealed class Criu : ICriuProbe
    {
        public Task<CriuInfo> ProbeAsync(CancellationToken ct) => Task.FromResult(new CriuInfo("/usr/sbin/criu", "4.2.1", 40201, null, new CriuFeatures(false, true)));
    }

    private MigrationService Service(RestoreOptions restore) => new(
        new CheckpointService(_h.Containers, _h.Layout, new Criu(), new CheckpointOptions(), TimeProvider.System, NullLogger<CheckpointService>.Instance),
        _h.Containers, _h.Paths, restore, new Criu(), new MigrationNetworkLock(_commands, _h.Sandboxes, _h.Containers, _h.Layout, NullLogger<MigrationNetworkLock>.Instance),
        _h.Layout, new RootfsStaging(_h.Paths, restore),
        new PodCheckpointService(_h.Containers, _h.Sandboxes, _h.Pods, _h.Layout, new Criu(), _h.Linux, new PodOperationJournal(_h.Paths), new CheckpointOptions(), TimeProvider.System, NullLogger<PodCheckpointService>.Instance),
        _identities, _h.Images, TimeProvider.System, NullLogger<MigrationService>.Instance);

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

        var (token, path, bytes, unpacked) = await service.ReceiveAsync(Chunks(3, 1000), unpack: false, Ct);

        Assert.False(unpacked);

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

        var e = await Assert.ThrowsAsync<CrestException>(() => service.ReceiveAsync(Chunks(3, 1000), unpack: false, Ct));

        Assert.Equal(ErrorKind.ResourceExhausted, e.Kind);
        Assert.Contains("max_archive_bytes", e.Message, StringComparison.Ordinal);
        Assert.Empty(Directory.EnumerateFileSystemEntries(service.ArchiveDir));
    }

    [Fact]
    public async Task A_node_that_does_not_restore_through_create_refuses_to_be_a_target()
    {
        var service = Service(new RestoreOptions { ViaCreate = false });

        var e = await Assert.ThrowsAsync<CrestException>(() => service.ReceiveAsync(Chunks(1, 10), unpack: true, Ct));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains("via_create = true", e.Message, StringComparison.Ordinal);
    }

    /// <summary>A tar of <paramref name="files"/> (plus <paramref name="more"/>), sent in chunks of <paramref name="chunk"/> bytes.</summary>
    private static (IAsyncEnumerable<ReadOnlyMemory<byte>> Chunks, long Bytes) TarChunks(IReadOnlyDictionary<string, string> files, int chunk, Action<System.Formats.Tar.TarWriter>? more = null)
    {
        using var ms = new MemoryStream();
        using (var tar = new System.Formats.Tar.TarWriter(ms, System.Formats.Tar.TarEntryFormat.Pax, leaveOpen: true))
        {
            foreach (var (name, content) in files)
            {
                tar.WriteEntry(new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.RegularFile, name)
                {
                    DataStream = new MemoryStream(System.Text.Encoding.UTF8.GetBytes(content)),
                });
            }

            more?.Invoke(tar);
        }

        var bytes = ms.ToArray();
        return (Split(bytes, chunk), bytes.Length);
    }

    private static async IAsyncEnumerable<ReadOnlyMemory<byte>> Split(byte[] bytes, int chunk)
    {
        for (var at = 0; at < bytes.Length; at += chunk)
        {
            await Task.Yield();
            yield return bytes.AsMemory(at, Math.Min(chunk, bytes.Length - at));
        }
    }

    [Fact]
    public async Task An_archive_unpacked_on_receipt_is_a_private_checkpoint_directory_that_only_its_token_names()
    {
        var service = Service(new RestoreOptions { ViaCreate = true });
        var (chunks, sent) = TarChunks(new Dictionary<string, string>
        {
            ["config.dump"] = "{}",
            ["checkpoint/inventory.img"] = new string('i', 5000),
        }, chunk: 1000);

        var received = await service.ReceiveAsync(chunks, unpack: true, Ct);

        Assert.True(received.Unpacked);
        Assert.Equal(sent, received.Bytes);
        Assert.Equal(_h.Paths.ReceivedCheckpoint(received.Token), received.Path);
        Assert.True(_h.Paths.IsReceivedCheckpoint(received.Path));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(received.Path));
        Assert.Equal(new string('i', 5000), await File.ReadAllTextAsync(Path.Combine(received.Path, "checkpoint", "inventory.img"), Ct));
        // Nothing stored twice: no archive file beside the unpacked checkpoint.
        Assert.False(Directory.Exists(service.ArchiveDir) && Directory.EnumerateFileSystemEntries(service.ArchiveDir).Any());
        service.DropArchive(received.Token);
        Assert.False(Directory.Exists(received.Path));
    }

    [Fact]
    public async Task An_archive_unpacked_on_receipt_that_escapes_or_links_is_refused_and_leaves_nothing()
    {
        var service = Service(new RestoreOptions { ViaCreate = true });
        var (escaping, _) = TarChunks(new Dictionary<string, string> { ["config.dump"] = "{}", ["../outside"] = "x" }, chunk: 512);
        var (linking, _) = TarChunks(new Dictionary<string, string> { ["config.dump"] = "{}" }, chunk: 512,
            tar => tar.WriteEntry(new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.SymbolicLink, "checkpoint") { LinkName = "/etc" }));

        var e1 = await Assert.ThrowsAsync<CrestException>(() => service.ReceiveAsync(escaping, unpack: true, Ct));
        var e2 = await Assert.ThrowsAsync<CrestException>(() => service.ReceiveAsync(linking, unpack: true, Ct));

        Assert.Equal(ErrorKind.InvalidArgument, e1.Kind);
        Assert.Equal(ErrorKind.InvalidArgument, e2.Kind);
        Assert.Contains("migration archive", e1.Message, StringComparison.Ordinal);
        Assert.Empty(Directory.EnumerateFileSystemEntries(_h.Paths.Restores));
        Assert.False(File.Exists(Path.Combine(_h.Paths.Root, "outside")));
    }

    [Fact]
    public async Task An_archive_unpacked_on_receipt_over_the_restore_limit_is_refused_and_leaves_nothing()
    {
        var service = Service(new RestoreOptions { ViaCreate = true, Limits = new RestoreLimits { MaxArchiveBytes = 2500 } });
        var (chunks, _) = TarChunks(new Dictionary<string, string> { ["config.dump"] = "{}", ["checkpoint/pages-1.img"] = new string('p', 8000) }, chunk: 1000);

        var e = await Assert.ThrowsAsync<CrestException>(() => service.ReceiveAsync(chunks, unpack: true, Ct));

        Assert.Equal(ErrorKind.ResourceExhausted, e.Kind);
        Assert.Contains("max_archive_bytes", e.Message, StringComparison.Ordinal);
        Assert.Empty(Directory.EnumerateFileSystemEntries(_h.Paths.Restores));
    }

    [Fact]
    public void Only_a_received_checkpoints_own_path_names_one()
    {
        var token = new string('a', 24);

        Assert.True(_h.Paths.IsReceivedCheckpoint(_h.Paths.ReceivedCheckpoint(token)));
        Assert.False(_h.Paths.IsReceivedCheckpoint(_h.Paths.ReceivedCheckpoint(token) + "/.."));
        Assert.False(_h.Paths.IsReceivedCheckpoint(_h.Paths.ReceivedCheckpoint(token[..23] + "A")));
        Assert.False(_h.Paths.IsReceivedCheckpoint(_h.Paths.ReceivedCheckpoint(token[..23])));
        Assert.False(_h.Paths.IsReceivedCheckpoint(Path.Combine(_h.Paths.Restores, token)));
        Assert.False(_h.Paths.IsReceivedCheckpoint("/tmp/received-" + token));
    }

    [Fact]
    public async Task A_stop_copy_freezes_held_checkpoint_streams_as_a_tar_of_its_files_and_dropping_it_removes_the_checkpoint()
    {
        var service = Service(new RestoreOptions { ViaCreate = true });
        var work = Directory.CreateDirectory(Path.Combine(_h.Layout.ContainerDir("c1"), "checkpoint-work-0123456789ab")).FullName;
        Directory.CreateDirectory(Path.Combine(work, "checkpoint"));
        await File.WriteAllTextAsync(Path.Combine(work, "checkpoint", "inventory.img"), "images", Ct);
        await File.WriteAllTextAsync(Path.Combine(work, "config.dump"), "{}", Ct);
        Directory.CreateDirectory(service.ArchiveDir);
        var token = new string('a', 24);
        // What FreezeAsync records for a stop-copy freeze: the work directory the archive is made from.
        await File.WriteAllTextAsync(Path.Combine(service.ArchiveDir, token + ".work"), work, Ct);

        using var sent = new MemoryStream();
        await service.SendArchiveAsync(token, sent, Ct);
        sent.Position = 0;
        var names = new List<string>();
        using (var tar = new System.Formats.Tar.TarReader(sent))
        {
            while (await tar.GetNextEntryAsync(cancellationToken: Ct) is { } entry)
            {
                names.Add(entry.Name.TrimEnd('/'));
            }
        }

        Assert.Contains("checkpoint/inventory.img", names);
        Assert.Contains("config.dump", names);

        service.DropArchive(token);

        Assert.False(Directory.Exists(work));
        Assert.Empty(Directory.EnumerateFileSystemEntries(service.ArchiveDir));
        await Assert.ThrowsAsync<CrestException>(() => service.SendArchiveAsync(token, Stream.Null, Ct));
    }

    [Fact]
    public async Task Resuming_a_source_drops_the_checkpoint_its_stop_copy_freeze_held_and_only_that()
    {
        var service = Service(new RestoreOptions { ViaCreate = true });
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await _h.RecordRunningAsync("c1", pod.Id, Ct);
        Directory.CreateDirectory(service.ArchiveDir);
        var held = Directory.CreateDirectory(Path.Combine(_h.Layout.ContainerDir(c.Id), "checkpoint-work-0123456789ab")).FullName;
        var other = Directory.CreateDirectory(Path.Combine(_h.Layout.ContainerDir("c2"), "checkpoint-work-ba9876543210")).FullName;
        await File.WriteAllTextAsync(Path.Combine(service.ArchiveDir, new string('c', 24) + ".work"), held, Ct);
        await File.WriteAllTextAsync(Path.Combine(service.ArchiveDir, new string('d', 24) + ".work"), other, Ct);

        await service.ResumeAsync(c.Id, Ct);

        Assert.False(Directory.Exists(held));
        Assert.True(Directory.Exists(other));
        Assert.Equal([new string('d', 24) + ".work"], Directory.EnumerateFiles(service.ArchiveDir).Select(Path.GetFileName));
    }

    [Fact]
    public async Task A_held_checkpoint_record_naming_a_directory_outside_the_containers_is_not_followed()
    {
        var service = Service(new RestoreOptions { ViaCreate = true });
        Directory.CreateDirectory(service.ArchiveDir);
        var elsewhere = Directory.CreateDirectory(Path.Combine(_h.Paths.Root, "elsewhere", "checkpoint-work-0123456789ab")).FullName;
        var token = new string('b', 24);
        await File.WriteAllTextAsync(Path.Combine(service.ArchiveDir, token + ".work"), elsewhere, Ct);

        var e = await Assert.ThrowsAsync<CrestException>(() => service.SendArchiveAsync(token, Stream.Null, Ct));

        Assert.Equal(ErrorKind.NotFound, e.Kind);
        service.DropArchive(token);
        Assert.True(Directory.Exists(elsewhere));
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
        var e = await Assert.ThrowsAsync<CrestException>(() => service.FreezeAsync(c.Id, TimeSpan.Zero, tcpEstablished: false, Ct));

        Assert.Contains("inventory.img", e.Message, StringComparison.Ordinal);

        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
        Assert.Contains("pause c1", _h.Runtimes.Calls);
        Assert.Equal("resume c1", _h.Runtimes.Calls.Last(call => call.Split(' ')[0] is "pause" or "resume"));
        Assert.Empty(Directory.EnumerateFileSystemEntries(service.ArchiveDir));
    }

    /// <summary>The target's certificate as PreparePageClient would make it, on another node.</summary>
    private string TargetCertificate()
    {
        using var target = new Crest.TestKit.TempDir("target-node");
        return new PageTransferIdentities(target.Combine("page-tls"), _commands, "/bin/sh").Create(TimeProvider.System).Certificate;
    }

    private static async Task WaitGoneAsync(string path)
    {
        // The page server's end is observed by a continuation.
        for (var i = 0; i < 200 && Directory.Exists(path); i++)
        {
            await Task.Delay(50, Ct);
        }
    }

    [Fact]
    public async Task A_post_copy_freeze_over_tls_serves_with_a_key_pair_of_its_own_pins_the_target_and_removes_the_key_when_the_page_server_ends()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await RunningWithConfigAsync("c1", pod.Id);
        var service = Service(new RestoreOptions { ViaCreate = true });
        var targetCertificate = TargetCertificate();
        string? duringDump = null;
        _h.Runtimes.DuringCheckpoint = o =>
        {
            duringDump = File.ReadAllText(_h.Layout.Container(c.Id).CriuConfig);
            // What CRIU writes before it serves pages, so the checkpoint completes.
            File.WriteAllText(Path.Combine(o.ImagePath, "inventory.img"), "");
        };

        var frozen = await service.FreezeAsync(c.Id, TimeSpan.Zero, tcpEstablished: false, Ct, pageServerAddress: "127.0.0.1", pageClientCertificate: targetCertificate);

        var dir = Assert.Single(Directory.EnumerateDirectories(_identities.Root));
        var lines = duringDump!.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(["tls", $"tls-cacert {dir}/peer.pem", $"tls-cert {dir}/cert.pem", $"tls-key {dir}/key.pem", "tls-no-cn-verify"], lines.SkipWhile(l => l != "tls"));
        Assert.Equal(targetCertificate.Trim(), File.ReadAllText(Path.Combine(dir, "peer.pem")).Trim());
        Assert.Equal(File.ReadAllText(Path.Combine(dir, "cert.pem")).Trim(), frozen.PageServerCertificate!.Trim());
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(dir, "key.pem")));
        Assert.Contains("/bin/sh check --tls --feature uffd-noncoop", _commands.Lines);

        await service.ResumeAsync(c.Id, Ct);
        await WaitGoneAsync(dir);

        Assert.False(Directory.Exists(dir));
        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
    }

    [Fact]
    public async Task A_post_copy_freeze_over_tls_that_fails_leaves_no_key_material()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await RunningWithConfigAsync("c1", pod.Id);
        var service = Service(new RestoreOptions { ViaCreate = true });

        // The fake runtime writes no CRIU images: the checkpoint fails after the page server started.
        await Assert.ThrowsAsync<CrestException>(() => service.FreezeAsync(c.Id, TimeSpan.Zero, tcpEstablished: false, Ct, pageServerAddress: "127.0.0.1", pageClientCertificate: TargetCertificate()));

        Assert.True(!Directory.Exists(_identities.Root) || !Directory.EnumerateFileSystemEntries(_identities.Root).Any());
        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
    }

    [Fact]
    public async Task A_page_client_identity_that_no_restore_took_goes_with_drop_archive_and_with_the_start_sweep()
    {
        var service = Service(new RestoreOptions { ViaCreate = true });

        var dropped = await service.PreparePageClientAsync(Ct);
        var left = await service.PreparePageClientAsync(Ct);
        service.DropArchive(dropped.Token);

        Assert.False(_identities.Exists(dropped.Token));
        Assert.True(_identities.Exists(left.Token));
        service.SweepArchives();
        Assert.False(_identities.Exists(left.Token));
    }

    private async Task<ContainerRecord> RunningWithConfigAsync(string id, string podId)
    {
        var c = await _h.RecordRunningAsync(id, podId, Ct);
        var bundle = _h.Layout.Container(c.Id);
        Directory.CreateDirectory(Path.GetDirectoryName(bundle.ConfigJson)!);
        await File.WriteAllTextAsync(bundle.ConfigJson, """{"mounts": [], "annotations": {}}""", Ct);
        Directory.CreateDirectory(bundle.Upper);
        return c;
    }

    [Fact]
    public async Task Rootfs_rounds_are_held_as_archives_belong_to_their_container_and_survive_a_failed_freeze_until_dropped()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c1 = await RunningWithConfigAsync("c1", pod.Id);
        var c2 = await RunningWithConfigAsync("c2", pod.Id);
        await File.WriteAllTextAsync(Path.Combine(_h.Layout.Container(c1.Id).Upper, "data"), "round one", Ct);
        var service = Service(new RestoreOptions { ViaCreate = true });

        var first = await service.PrepareRootfsRoundAsync(c1.Id, null, Ct);
        var second = await service.PrepareRootfsRoundAsync(c1.Id, first.RoundsToken, Ct);

        Assert.Equal((1, 1L, 9L), (first.Round, first.Files, first.Bytes));
        Assert.Equal((2, first.RoundsToken), (second.Round, second.RoundsToken));
        await using (var held = service.OpenArchive(first.ArchiveToken))
        {
            Assert.Equal(first.ArchiveBytes, held.Length);
        }

        var other = await Assert.ThrowsAsync<CrestException>(() => service.PrepareRootfsRoundAsync(c2.Id, first.RoundsToken, Ct));
        Assert.Contains($"container {c1.Id}'s, not container {c2.Id}'s", other.Message, StringComparison.Ordinal);
        var unknown = await Assert.ThrowsAsync<CrestException>(() => service.FreezeAsync(c1.Id, TimeSpan.Zero, tcpEstablished: false, Ct, rootfsRounds: new string('f', 24)));
        Assert.Equal(ErrorKind.NotFound, unknown.Kind);
        Assert.Empty(_h.Runtimes.Checkpointed);

        // The fake runtime writes no CRIU images: the freeze fails after the dump, and the rounds stay for a retry or the undo.
        await Assert.ThrowsAsync<CrestException>(() => service.FreezeAsync(c1.Id, TimeSpan.Zero, tcpEstablished: false, Ct, rootfsRounds: first.RoundsToken));
        Assert.Equal(3, (await service.PrepareRootfsRoundAsync(c1.Id, first.RoundsToken, Ct)).Round);
        service.DropRootfsRounds(first.RoundsToken);
        Assert.Equal(ErrorKind.NotFound, (await Assert.ThrowsAsync<CrestException>(() => service.PrepareRootfsRoundAsync(c1.Id, first.RoundsToken, Ct))).Kind);
    }

    [Fact]
    public async Task A_freeze_that_moves_tcp_connections_locks_the_pod_network_dumps_them_and_a_failure_unlocks_and_resumes()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await RunningWithConfigAsync("c1", pod.Id);
        var service = Service(new RestoreOptions { ViaCreate = true });

        // The fake runtime's checkpoint writes no CRIU images, so the checkpoint fails after the dump.
        await Assert.ThrowsAsync<CrestException>(() => service.FreezeAsync(c.Id, TimeSpan.Zero, tcpEstablished: true, Ct));

        var netns = (await _h.Sandboxes.GetAsync(pod.Id, Ct)).NetnsPath!;
        Assert.Contains($"nsenter --net={netns} iptables -w -I INPUT -p tcp -m comment --comment {MigrationLockRule.Comment} -j DROP", _commands.Lines);
        Assert.Contains($"nsenter --net={netns} iptables -w -I OUTPUT -p tcp -m comment --comment {MigrationLockRule.Comment} -j DROP", _commands.Lines);
        Assert.True(Assert.Single(_h.Runtimes.Checkpointed).TcpEstablished);
        Assert.Empty(_commands.Active);
        Assert.Equal("running", _h.Runtimes.StatusOf(c.Id));
    }

    [Fact]
    public async Task A_freeze_without_tcp_connections_leaves_the_network_alone()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await RunningWithConfigAsync("c1", pod.Id);

        await Assert.ThrowsAsync<CrestException>(() => Service(new RestoreOptions { ViaCreate = true }).FreezeAsync(c.Id, TimeSpan.Zero, tcpEstablished: false, Ct));

        Assert.Empty(_commands.Lines);
        Assert.False(Assert.Single(_h.Runtimes.Checkpointed).TcpEstablished);
    }

    [Fact]
    public async Task Moving_tcp_connections_is_refused_while_another_container_of_the_pod_runs()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await RunningWithConfigAsync("c1", pod.Id);
        await _h.RecordRunningAsync("c2", pod.Id, Ct);

        var e = await Assert.ThrowsAsync<CrestException>(() => Service(new RestoreOptions { ViaCreate = true }).FreezeAsync(c.Id, TimeSpan.Zero, tcpEstablished: true, Ct));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains("c2", e.Message, StringComparison.Ordinal);
        Assert.Empty(_commands.Lines);
        Assert.Empty(_h.Runtimes.Checkpointed);
    }

    [Fact]
    public async Task Resume_lifts_the_lock_of_a_frozen_source()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await RunningWithConfigAsync("c1", pod.Id);
        await new MigrationNetworkLock(_commands, _h.Sandboxes, _h.Containers, _h.Layout, NullLogger<MigrationNetworkLock>.Instance).LockAsync(c, Ct);
        Assert.NotEmpty(_commands.Active);

        await Service(new RestoreOptions()).ResumeAsync(c.Id, Ct);

        Assert.Empty(_commands.Active);
    }

    [Fact]
    public async Task Resume_of_a_source_that_was_never_locked_runs_no_iptables()
    {
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await RunningWithConfigAsync("c1", pod.Id);

        await Service(new RestoreOptions()).ResumeAsync(c.Id, Ct);

        Assert.Empty(_commands.Lines);
    }

    [Fact]
    public async Task A_restart_lifts_the_lock_of_a_source_its_recovery_resumed_and_keeps_that_of_a_killed_source()
    {
        var network = new MigrationNetworkLock(_commands, _h.Sandboxes, _h.Containers, _h.Layout, NullLogger<MigrationNetworkLock>.Instance);
        var resumed = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod("resumed"), Ct);
        await network.LockAsync(await RunningWithConfigAsync("c1", resumed.Id), Ct);
        var killed = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod("killed"), Ct);
        await network.LockAsync(await RunningWithConfigAsync("c2", killed.Id), Ct);
        // c2's copy runs elsewhere: killed and removed, its pod not yet.
        await _h.Store.DeleteContainerAsync("c2", Ct);

        var lifted = await network.SweepAsync(Ct);

        Assert.Equal(1, lifted);
        var killedNetns = (await _h.Sandboxes.GetAsync(killed.Id, Ct)).NetnsPath!;
        Assert.NotEmpty(_commands.Active);
        Assert.All(_commands.Active, rule => Assert.Contains(killedNetns, rule, StringComparison.Ordinal));
        Assert.False(File.Exists(Path.Combine(_h.Layout.SandboxDir(resumed.Id), "migration-lock")));
        Assert.True(File.Exists(Path.Combine(_h.Layout.SandboxDir(killed.Id), "migration-lock")));
    }

    [Fact]
    public async Task A_restart_keeps_the_lock_of_a_source_still_held_frozen_for_its_migration()
    {
        var network = new MigrationNetworkLock(_commands, _h.Sandboxes, _h.Containers, _h.Layout, NullLogger<MigrationNetworkLock>.Instance);
        var pod = await _h.Sandboxes.RunAsync(RuntimeHarness.Pod(), Ct);
        var c = await RunningWithConfigAsync("c1", pod.Id);
        await network.LockAsync(c, Ct);
        await _h.Store.PutContainerAsync(c with { MigrationHold = new MigrationHold(DateTimeOffset.UtcNow) }, Ct);

        var lifted = await network.SweepAsync(Ct);

        // The migration may yet kill it: its sockets must not answer the peer that now talks to the target.
        Assert.Equal(0, lifted);
        Assert.NotEmpty(_commands.Active);
        Assert.True(File.Exists(Path.Combine(_h.Layout.SandboxDir(pod.Id), "migration-lock")));
    }

    [Fact]
    public void A_checkpoint_holding_established_connections_is_restored_with_them()
    {
        var images = _h.Paths.Root + "/images-tcp";
        Directory.CreateDirectory(images);
        File.WriteAllBytes(Path.Combine(images, "inventory.img"), []);
        Assert.False(RestoreService.HoldsEstablishedTcp(images));

        File.WriteAllBytes(Path.Combine(images, "tcp-stream-5a3c.img"), []);

        Assert.True(RestoreService.HoldsEstablishedTcp(images));
        Assert.False(RestoreService.HoldsEstablishedTcp(_h.Paths.Root + "/absent"));
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
