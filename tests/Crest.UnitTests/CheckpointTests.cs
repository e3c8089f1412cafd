using System.Buffers.Binary;
using System.Diagnostics;
using System.Formats.Tar;
using System.Globalization;
using System.IO.Compression;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Crest.Checkpoint;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Criu.Api;
using Crest.Linux;
using Crest.TestKit;
using CsCheck;
using Google.Protobuf;
using Microsoft.Extensions.Logging.Abstractions;

namespace Crest.UnitTests;

public partial class CheckpointTests
{
    private static readonly string Hex = string.Concat(Enumerable.Repeat("0123456789abcdef", 4));
    private static readonly string AlpineDigest = "docker.io/library/alpine@sha256:" + Hex;
    private static readonly DateTimeOffset CheckpointedAt = new(2026, 2, 3, 4, 5, 6, TimeSpan.Zero);
    private static readonly byte[] Inventory = [0x55, 0x10, 0x59, 0x40, 1, 2, 3, 4, 5, 6, 7, 8];
    private static readonly byte[] LogBytes = "2026-02-03T04:05:06Z stdout F hello\n"u8.ToArray();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    // ---- archive builders -------------------------------------------------------------------------------

    private static byte[] Utf8(JsonNode node) => Encoding.UTF8.GetBytes(node.ToJsonString());

    private static JsonObject ContainerdConfig(string? rootfsImageName = "docker.io/library/alpine:latest") => new()
    {
        ["id"] = new string('c', 64),
        ["name"] = "counter-ctr",
        ["rootfsImage"] = "docker.io/library/alpine:latest",
        ["rootfsImageRef"] = AlpineDigest,
        ["rootfsImageName"] = rootfsImageName,
        ["runtime"] = "io.containerd.runc.v2",
        ["createdTime"] = "2026-01-01T00:00:00Z",
        ["checkpointedTime"] = "2026-02-03T04:05:06Z",
        ["restoredTime"] = "0001-01-01T00:00:00Z",
        ["restored"] = false,
    };

    private static JsonObject ContainerdSpec() => new()
    {
        ["ociVersion"] = "1.2.0",
        ["annotations"] = new JsonObject
        {
            ["io.kubernetes.cri.container-name"] = "counter",
            ["io.kubernetes.cri.container-type"] = "container",
            ["io.kubernetes.cri.sandbox-name"] = "counters",
            ["io.kubernetes.cri.sandbox-namespace"] = "default",
            ["io.kubernetes.cri.image-name"] = "docker.io/library/alpine:latest",
        },
        ["mounts"] = new JsonArray
        {
            new JsonObject { ["destination"] = "/proc", ["type"] = "proc", ["source"] = "proc" },
        },
    };

    private static JsonObject ContainerdStatus() => new()
    {
        ["id"] = new string('c', 64),
        ["metadata"] = new JsonObject { ["name"] = "counter", ["attempt"] = 1 },
        ["state"] = 1,
        ["created_at"] = 1767225600000000000L,
        ["started_at"] = 1767225601000000000L,
        ["image"] = new JsonObject { ["image"] = "docker.io/library/alpine:latest" },
        ["image_ref"] = AlpineDigest,
        ["labels"] = new JsonObject { ["app"] = "counter", ["io.kubernetes.container.name"] = "counter" },
        ["annotations"] = new JsonObject { ["io.kubernetes.container.hash"] = "abc123", ["io.kubernetes.pod.uid"] = "old-uid" },
        ["log_path"] = "counter/0.log",
    };

    /// <summary>The files of a containerd checkpoint archive; a test removes or replaces some before packing.</summary>
    private static Dictionary<string, byte[]> ContainerdFiles() => new(StringComparer.Ordinal)
    {
        [CheckpointFiles.ConfigDump] = Utf8(ContainerdConfig()),
        [CheckpointFiles.SpecDump] = Utf8(ContainerdSpec()),
        [CheckpointFiles.StatusDump] = Utf8(ContainerdStatus()),
        ["checkpoint/inventory.img"] = Inventory,
        [CheckpointFiles.ContainerLog] = LogBytes,
    };

    private static byte[] Tar(Action<TarWriter> write)
    {
        using var ms = new MemoryStream();
        using (var w = new TarWriter(ms, TarEntryFormat.Pax, leaveOpen: true))
        {
            write(w);
        }

        return ms.ToArray();
    }

    private static void AddFile(TarWriter t, string name, byte[] content) =>
        t.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, name)
        {
            DataStream = new MemoryStream(content),
            Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
            ModificationTime = CheckpointedAt,
        });

    private static byte[] Tar(IReadOnlyDictionary<string, byte[]> files, Action<TarWriter>? more = null) => Tar(t =>
    {
        foreach (var dir in files.Keys.Where(k => k.Contains('/', StringComparison.Ordinal)).Select(k => k[..k.LastIndexOf('/')]).Distinct(StringComparer.Ordinal))
        {
            t.WriteEntry(new PaxTarEntry(TarEntryType.Directory, dir + "/") { Mode = (UnixFileMode)0x1C0, ModificationTime = CheckpointedAt });
        }

        foreach (var (name, content) in files)
        {
            AddFile(t, name, content);
        }

        more?.Invoke(t);
    });

    private static byte[] Compress(byte[] plain, string compression)
    {
        using var ms = new MemoryStream();
        switch (compression)
        {
            case "gzip":
                using (var gz = new GZipStream(ms, CompressionLevel.Fastest, leaveOpen: true))
                {
                    gz.Write(plain);
                }

                break;
            case "zstd":
                using (var zs = new ZstdSharp.CompressionStream(ms, 3, leaveOpen: true))
                {
                    zs.Write(plain);
                }

                break;
            default:
                return plain;
        }

        return ms.ToArray();
    }

    /// <summary>A fresh layout: root/archive.tar, root/staging (new, empty) and nothing else.</summary>
    private sealed class Layout : IDisposable
    {
        private readonly TempDir _root = new("crest-ckpt");

        public Layout(byte[] archive)
        {
            Archive = _root.Combine("archive.tar");
            File.WriteAllBytes(Archive, archive);
            Staging = _root.CreateDirectory("staging");
        }

        public string Root => _root.Path;

        public string Archive { get; }

        public string Staging { get; }

        /// <summary>Whatever exists in the root besides the archive and the staging directory.</summary>
        public List<string> Strays() => Directory.EnumerateFileSystemEntries(Root)
            .Where(p => p != Archive && p != Staging).ToList();

        public void Dispose() => _root.Dispose();
    }

    private static Task<RestorePlan> ReadAsync(Layout layout, RestoreLimits? limits = null) =>
        new CheckpointReader(limits ?? new RestoreLimits()).ReadArchiveAsync(layout.Archive, layout.Staging, Ct);

    private static void AssertMap(IReadOnlyDictionary<string, string> expected, IReadOnlyDictionary<string, string> actual) =>
        Assert.Equal(
            expected.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => kv.Key + "=" + kv.Value),
            actual.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => kv.Key + "=" + kv.Value));

    // ---- a live migration's frozen delta -----------------------------------------------------------------

    [Fact]
    public async Task A_frozen_delta_names_the_staged_rounds_it_sits_on_and_a_complete_archive_names_none()
    {
        var rounds = new[] { new string('a', 64), new string('b', 64) };
        var files = ContainerdFiles();
        files[CheckpointFiles.RootfsRounds] = JsonSerializer.SerializeToUtf8Bytes(new RootfsRoundsRecord { Rounds = [.. rounds] }, CheckpointJson.Default.RootfsRoundsRecord);
        using var delta = new Layout(Tar(files));
        using var complete = new Layout(Tar(ContainerdFiles()));

        Assert.Equal(rounds, (await ReadAsync(delta)).StagedRootfsRounds);
        Assert.Null((await ReadAsync(complete)).StagedRootfsRounds);
    }

    [Theory]
    [InlineData("{\"rounds\": []}", "expected 1 to 64 rounds")]
    [InlineData("{\"rounds\": [\"../../etc\"]}", "each the SHA-256 of a round")]
    [InlineData("[1]", "crest-rootfs-rounds.json")]
    public async Task A_malformed_rounds_record_is_refused(string record, string expected)
    {
        var files = ContainerdFiles();
        files[CheckpointFiles.RootfsRounds] = System.Text.Encoding.UTF8.GetBytes(record);
        using var layout = new Layout(Tar(files));

        var e = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_archive_cannot_bring_its_own_staged_rounds()
    {
        var files = ContainerdFiles();
        files[CheckpointFiles.StagedRootfsRounds + "/0001.tar"] = [0];
        using var layout = new Layout(Tar(files));

        var e = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout));

        Assert.Contains("a name only the restoring node makes", e.Message, StringComparison.Ordinal);
    }

    // ---- 1. containerd ----------------------------------------------------------------------------------

    [Fact]
    public async Task A_containerd_archive_reads_into_a_plan_by_digest_with_the_status_dump_metadata()
    {
        using var layout = new Layout(Tar(ContainerdFiles()));

        var plan = await ReadAsync(layout);

        Assert.Equal(CheckpointEngine.Containerd, plan.Engine);
        Assert.Equal(CheckpointSourceKind.Archive, plan.SourceKind);
        Assert.Equal(layout.Archive, plan.Source);
        Assert.Equal(AlpineDigest, plan.BaseImageDigestReference);
        Assert.Null(plan.BaseImageId);
        Assert.Equal("docker.io/library/alpine:latest", plan.BaseImageName);
        Assert.Equal("counter", plan.OriginalName);
        Assert.Equal("io.containerd.runc.v2", plan.OriginalRuntime);
        AssertMap(new Dictionary<string, string> { ["io.kubernetes.container.hash"] = "abc123", ["io.kubernetes.pod.uid"] = "old-uid" }, plan.Annotations);
        AssertMap(new Dictionary<string, string> { ["app"] = "counter", ["io.kubernetes.container.name"] = "counter" }, plan.Labels);
        Assert.Equal(CheckpointedAt, plan.CheckpointedAt);
        Assert.Equal(CheckpointFiles.ContainerLog, plan.LogCopy);
        Assert.Equal(layout.Staging, plan.StagingDir);
        Assert.Empty(plan.MountDestinations);
        Assert.Empty(plan.BindMounts);
        Assert.Equal(0, plan.RootfsDiffBytes);
        Assert.Equal(Inventory.Length, plan.CriuImageBytes);
        Assert.Equal(LogBytes, await File.ReadAllBytesAsync(Path.Combine(layout.Staging, CheckpointFiles.ContainerLog), Ct));
        Assert.Empty(layout.Strays());
    }

    // ---- 2. CRI-O ---------------------------------------------------------------------------------------

    private static Dictionary<string, byte[]> CrioFiles()
    {
        var spec = new JsonObject
        {
            ["ociVersion"] = "1.2.0",
            ["annotations"] = new JsonObject
            {
                ["io.container.manager"] = "cri-o",
                ["io.kubernetes.cri-o.Annotations"] = """{"io.kubernetes.container.hash":"h1","io.kubernetes.pod.uid":"old","safe":"yes"}""",
                ["io.kubernetes.cri-o.Labels"] = """{"app":"web","io.kubernetes.container.name":"web"}""",
                ["io.kubernetes.cri-o.Metadata"] = """{"name":"web","attempt":0}""",
                ["io.kubernetes.cri-o.ImageRepoDigests"] = "quay.io/x/y@sha256:" + Hex,
                ["io.kubernetes.cri-o.ContainerName"] = "k8s_web_web-pod_default_0123_0",
                ["io.kubernetes.cri-o.ImageRef"] = Hex,
            },
            ["mounts"] = new JsonArray
            {
                new JsonObject { ["destination"] = "/proc", ["type"] = "proc", ["source"] = "proc", ["options"] = new JsonArray("nosuid", "noexec", "nodev") },
                new JsonObject { ["destination"] = "/tmp", ["type"] = "tmpfs", ["source"] = "tmpfs", ["options"] = new JsonArray("nosuid") },
                new JsonObject { ["destination"] = "/etc/hosts", ["type"] = "bind", ["source"] = "/run/containers/storage/hosts", ["options"] = new JsonArray("rbind", "ro") },
                new JsonObject { ["destination"] = "/dev/shm", ["type"] = "bind", ["source"] = "/run/containers/storage/shm", ["options"] = new JsonArray("rw", "bind") },
                new JsonObject { ["destination"] = "/data", ["type"] = "bind", ["source"] = "/srv/web-data", ["options"] = new JsonArray("rbind", "rw") },
            },
        };
        var config = new JsonObject
        {
            ["id"] = new string('d', 64),
            ["name"] = "k8s_web_web-pod_default_0123_0",
            ["rootfsImage"] = "quay.io/x/y:latest",
            ["rootfsImageRef"] = Hex,
            ["rootfsImageName"] = "quay.io/x/y:latest",
            ["runtime"] = "crun",
            ["createdTime"] = "2026-01-01T00:00:00Z",
            ["checkpointedTime"] = "2026-02-03T04:05:06Z",
        };
        var binds = new JsonArray
        {
            new JsonObject { ["source"] = "/srv/web-data", ["destination"] = "/data/", ["file_type"] = "directory", ["permissions"] = 0x41ED },
            new JsonObject { ["source"] = "/srv/web.conf", ["destination"] = "/etc/web.conf", ["file_type"] = "file", ["permissions"] = 0x81A4 },
        };
        return new Dictionary<string, byte[]>(StringComparer.Ordinal)
        {
            [CheckpointFiles.ConfigDump] = Utf8(config),
            [CheckpointFiles.SpecDump] = Utf8(spec),
            [CheckpointFiles.BindMounts] = Utf8(binds),
            ["checkpoint/inventory.img"] = Inventory,
            ["checkpoint/pages-1.img"] = new byte[4096],
            [CheckpointFiles.CrioLog] = LogBytes,
        };
    }

    [Fact]
    public async Task A_cri_o_archive_normalises_its_json_string_annotations_and_prefers_the_repo_digest_to_the_bare_id()
    {
        using var layout = new Layout(Tar(CrioFiles()));

        var plan = await ReadAsync(layout);

        Assert.Equal(CheckpointEngine.CriO, plan.Engine);
        AssertMap(new Dictionary<string, string> { ["io.kubernetes.container.hash"] = "h1", ["io.kubernetes.pod.uid"] = "old", ["safe"] = "yes" }, plan.Annotations);
        AssertMap(new Dictionary<string, string> { ["app"] = "web", ["io.kubernetes.container.name"] = "web" }, plan.Labels);
        Assert.Equal("web", plan.OriginalName);
        Assert.Equal("quay.io/x/y@sha256:" + Hex, plan.BaseImageDigestReference);
        Assert.Equal("sha256:" + Hex, plan.BaseImageId);
        Assert.Equal("quay.io/x/y:latest", plan.BaseImageName);
        Assert.Equal("crun", plan.OriginalRuntime);
        Assert.Equal(CheckpointFiles.CrioLog, plan.LogCopy);
        Assert.Equal(["/data"], plan.MountDestinations);
        Assert.Equal(
            [new CheckpointBindMount("/srv/web-data", "/data", true, 0x1ED), new CheckpointBindMount("/srv/web.conf", "/etc/web.conf", false, 0x1A4)],
            plan.BindMounts);
        Assert.Equal(Inventory.Length + 4096, plan.CriuImageBytes);
    }

    [Fact]
    public async Task A_cri_o_archive_without_a_repo_digest_falls_back_to_the_local_id_never_a_digest_reference()
    {
        var files = CrioFiles();
        var spec = JsonNode.Parse(files[CheckpointFiles.SpecDump])!.AsObject();
        spec["annotations"]!.AsObject().Remove("io.kubernetes.cri-o.ImageRepoDigests");
        files[CheckpointFiles.SpecDump] = Utf8(spec);
        using var layout = new Layout(Tar(files));

        var plan = await ReadAsync(layout);

        Assert.Null(plan.BaseImageDigestReference);
        Assert.Equal("sha256:" + Hex, plan.BaseImageId);
        Assert.Equal("quay.io/x/y:latest", plan.BaseImageName);
    }

    // ---- 2b. Podman ------------------------------------------------------------------------------------

    /// <summary>
    /// The metadata of a Podman 5.8 <c>container checkpoint --export</c>, cut down from a real one: config.dump is libpod's
    /// whole ContainerConfig (the image by tag and by containers/storage ID, no rootfsImageRef, no checkpointedTime),
    /// spec.dump carries <c>io.container.manager: libpod</c> and Podman's own bind mounts, and the log copy is ctr.log.
    /// </summary>
    private static Dictionary<string, byte[]> PodmanFiles()
    {
        var bind = (string destination) => new JsonObject
        {
            ["destination"] = destination, ["type"] = "bind", ["source"] = "/var/lib/containers/storage/userdata" + destination,
            ["options"] = new JsonArray("bind", "rprivate"),
        };
        var spec = new JsonObject
        {
            ["ociVersion"] = "1.2.1",
            ["process"] = new JsonObject { ["args"] = new JsonArray("sh", "-c", "while true; do sleep 1; done") },
            ["annotations"] = new JsonObject
            {
                ["io.container.manager"] = "libpod",
                ["org.opencontainers.image.stopSignal"] = "15",
                ["org.systemd.property.KillSignal"] = "15",
                ["org.systemd.property.TimeoutStopUSec"] = "uint64 10000000",
            },
            ["mounts"] = new JsonArray
            {
                new JsonObject { ["destination"] = "/proc", ["type"] = "proc", ["source"] = "proc", ["options"] = new JsonArray("nosuid", "noexec", "nodev") },
                bind("/etc/hostname"), bind("/etc/hosts"), bind("/dev/shm"), bind("/run/.containerenv"),
            },
            ["linux"] = new JsonObject { ["namespaces"] = new JsonArray(new JsonObject { ["type"] = "pid" }, new JsonObject { ["type"] = "network" }) },
        };
        var config = new JsonObject
        {
            ["spec"] = spec.DeepClone(),
            ["id"] = new string('e', 64),
            ["name"] = "counter",
            ["RawImageName"] = "localhost:5000/e2e/busybox:v1",
            ["rootfsImageID"] = Hex,
            ["rootfsImageName"] = "localhost:5000/e2e/busybox:v1",
            ["createNetNS"] = false,
            ["createdTime"] = "2026-01-01T00:00:00Z",
            ["logDriver"] = "k8s-file",
            ["runtime"] = "runc",
            ["healthLogDestination"] = "local",
            ["kubeExitCodePropagation"] = 0,
            ["useImageHostname"] = false,
        };
        return new Dictionary<string, byte[]>(StringComparer.Ordinal)
        {
            [CheckpointFiles.ConfigDump] = Utf8(config),
            [CheckpointFiles.SpecDump] = Utf8(spec),
            ["network.status"] = "null"u8.ToArray(),
            ["stats-dump"] = [0x10, 0x20],
            ["deleted.files"] = """["/etc/motd"]"""u8.ToArray(),
            ["checkpoint/inventory.img"] = Inventory,
            [CheckpointFiles.PodmanLog] = LogBytes,
        };
    }

    [Fact]
    public async Task A_podman_5_archive_reads_by_the_tag_with_its_name_its_log_copy_and_only_containerenv_to_declare()
    {
        using var layout = new Layout(Compress(Tar(PodmanFiles()), "zstd"));

        var plan = await ReadAsync(layout);

        Assert.Equal(CheckpointEngine.Podman, plan.Engine);
        Assert.Equal("localhost:5000/e2e/busybox:v1", plan.BaseImageName);
        Assert.Null(plan.BaseImageDigestReference);
        Assert.Null(plan.BaseImageId);
        Assert.Equal("counter", plan.OriginalName);
        Assert.Equal("runc", plan.OriginalRuntime);
        Assert.Empty(plan.Annotations);
        Assert.Empty(plan.Labels);
        // No checkpointedTime in Podman's config.dump: the archive's time for checkpoint/inventory.img stands in (not the year 1).
        Assert.Equal(CheckpointedAt, plan.CheckpointedAt);
        Assert.Equal(CheckpointFiles.PodmanLog, plan.LogCopy);
        Assert.Equal(["/run/.containerenv"], plan.MountDestinations);
        Assert.Empty(plan.BindMounts);
        Assert.False(plan.JoinedPidNamespace);
        Assert.Equal(["sh", "-c", "while true; do sleep 1; done"], plan.ProcessArgs);
    }

    // ---- 3. missing required files ----------------------------------------------------------------------

    [Theory]
    [InlineData("config.dump", "failed to read \"config.dump\"")]
    [InlineData("spec.dump", "failed to read \"spec.dump\"")]
    [InlineData("checkpoint/inventory.img", "checkpoint/inventory.img")]
    public async Task An_archive_missing_a_required_file_is_refused_by_that_files_name(string missing, string expected)
    {
        var files = ContainerdFiles();
        Assert.True(files.Remove(missing));
        using var layout = new Layout(Tar(files));

        var e = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    // ---- 4. hostile archives, caps, compression ---------------------------------------------------------

    [Theory]
    [InlineData("symlink")]
    [InlineData("hardlink")]
    [InlineData("dotdot")]
    [InlineData("absolute")]
    [InlineData("whiteout")]
    [InlineData("device")]
    public async Task A_hostile_archive_is_refused_and_writes_nothing_outside_the_staging_dir(string attack)
    {
        using var outside = new TempDir("crest-outside");
        var files = ContainerdFiles();
        files.Remove(CheckpointFiles.ContainerLog);
        var archive = Tar(files, t =>
        {
            switch (attack)
            {
                case "symlink":
                    t.WriteEntry(new PaxTarEntry(TarEntryType.SymbolicLink, CheckpointFiles.ContainerLog) { LinkName = "/etc/shadow" });
                    break;
                case "hardlink":
                    t.WriteEntry(new PaxTarEntry(TarEntryType.HardLink, CheckpointFiles.ContainerLog) { LinkName = CheckpointFiles.ConfigDump });
                    break;
                case "dotdot":
                    AddFile(t, "../escape", "pwned"u8.ToArray());
                    break;
                case "absolute":
                    AddFile(t, outside.Combine("x"), "pwned"u8.ToArray());
                    break;
                case "whiteout":
                    AddFile(t, ".wh.config.dump", []);
                    break;
                default:
                    t.WriteEntry(new PaxTarEntry(TarEntryType.Fifo, CheckpointFiles.ContainerLog) { Mode = (UnixFileMode)0x1A4 });
                    break;
            }
        });
        using var layout = new Layout(archive);

        var e = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Empty(layout.Strays());
        Assert.Empty(Directory.EnumerateFileSystemEntries(outside.Path));
        Assert.False(File.Exists(Path.Combine(layout.Staging, CheckpointFiles.ContainerLog)) || FileKinds.IsSymlink(Path.Combine(layout.Staging, CheckpointFiles.ContainerLog)));
        Assert.True(File.Exists(Path.Combine(layout.Staging, CheckpointFiles.ConfigDump)), "the entries before the hostile one were staged, and only there");
    }

    [Fact]
    public async Task An_archive_with_more_entries_than_the_limit_is_refused()
    {
        var files = ContainerdFiles();
        for (var i = 0; i < 20; i++)
        {
            files[$"checkpoint/pages-{i}.img"] = [(byte)i];
        }

        using var layout = new Layout(Tar(files));

        var e = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout, new RestoreLimits { MaxArchiveEntries = 10 }));

        Assert.Contains("more than 10 entries", e.Message, StringComparison.Ordinal);
        Assert.True(Directory.EnumerateFileSystemEntries(layout.Staging, "*", SearchOption.AllDirectories).Count() <= 10);
    }

    [Fact]
    public async Task An_archive_that_expands_past_the_byte_limit_is_refused()
    {
        var files = ContainerdFiles();
        files["checkpoint/pages-1.img"] = new byte[64 * 1024];
        using var layout = new Layout(Tar(files));

        var e = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout, new RestoreLimits { MaxArchiveBytes = 16 * 1024 }));

        Assert.Contains("more than 16384 bytes", e.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(layout.Staging, "checkpoint", "pages-1.img")) && new FileInfo(Path.Combine(layout.Staging, "checkpoint", "pages-1.img")).Length > 16 * 1024);
    }

    [Fact]
    public async Task An_empty_rootfs_diff_file_as_earlier_crest_wrote_it_reads_as_no_changes()
    {
        var files = ContainerdFiles();
        files[CheckpointFiles.RootfsDiff] = [];
        using var layout = new Layout(Tar(files));

        var plan = await ReadAsync(layout);

        Assert.Equal(0, plan.RootfsDiffBytes);
    }

    [Theory]
    [InlineData("bytes")]
    [InlineData("entries")]
    [InlineData("garbage")]
    public async Task A_rootfs_diff_that_would_expand_past_its_limits_is_refused_while_reading_before_anything_is_applied(string bomb)
    {
        var diff = bomb switch
        {
            // 8 MiB of zeros, gzip-compressed to a few KiB.
            "bytes" => Compress(Tar(t => AddFile(t, "zeros", new byte[8 << 20])), "gzip"),
            "entries" => Tar(t =>
            {
                for (var i = 0; i < 50; i++)
                {
                    AddFile(t, $"f{i}", [1]);
                }
            }),
            _ => Compress("not a tar at all"u8.ToArray(), "gzip"),
        };
        var files = ContainerdFiles();
        files[CheckpointFiles.RootfsDiff] = diff;
        using var layout = new Layout(Tar(files));

        var e = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout, new RestoreLimits { MaxRootfsDiffBytes = 1 << 20, MaxRootfsDiffEntries = 10 }));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Contains("the rootfs diff of checkpoint", e.Message, StringComparison.Ordinal);
        Assert.Contains(bomb == "garbage" ? "is not a readable tar" : "max_rootfs_diff_bytes = 1048576, max_rootfs_diff_entries = 10", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_rootfs_diff_that_expands_too_far_per_compressed_byte_or_past_the_disks_free_space_is_refused_before_anything_is_written()
    {
        // 8 MiB of zeros, gzip-compressed to a few KiB: a ratio near 1000.
        var files = ContainerdFiles();
        files[CheckpointFiles.RootfsDiff] = Compress(Tar(t => AddFile(t, "zeros", new byte[8 << 20])), "gzip");
        using var layout = new Layout(Tar(files));
        using var disk = new TempDir();

        var bomb = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout, new RestoreLimits { RatioCheckFloorBytes = 1 << 20 }));
        // A disk with 4 MiB left above the reserve (a fixed probe: the real free space moves while other tests write).
        var full = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout,
            new RestoreLimits { MaxExpansionRatio = 0, TargetFilesystem = disk.Path, DiskReserveBytes = 60L << 20, FreeBytesOf = _ => 64L << 20, Disks = new DiskLedger() }));
        var trusted = await ReadAsync(layout, new RestoreLimits { MaxExpansionRatio = 0, RatioCheckFloorBytes = 1 << 20, TargetFilesystem = disk.Path });

        Assert.Equal(ErrorKind.InvalidArgument, bomb.Kind);
        Assert.Contains("(at member zeros), more than [restore] max_expansion_ratio = 100 allows", bomb.Message, StringComparison.Ordinal);
        Assert.Equal(ErrorKind.ResourceExhausted, full.Kind);
        Assert.Contains($"free on {disk.Path} after [restore] disk_reserve_bytes", full.Message, StringComparison.Ordinal);
        Assert.Equal(8L << 20, trusted.RootfsDiffBytes);
    }

    /// <summary>A whole checkpoint archive, gzip-compressed, whose CRIU pages are 16 MiB of zeros: a ratio near 1000.</summary>
    private static byte[] ArchiveWithZeroPages(string compression)
    {
        var files = ContainerdFiles();
        files["checkpoint/pages-1.img"] = new byte[16 << 20];
        return compression == "none" ? Tar(files) : Compress(Tar(files), compression);
    }

    [Theory]
    [InlineData("gzip")]
    [InlineData("zstd")]
    public async Task A_compressed_checkpoint_archive_that_expands_too_far_per_compressed_byte_is_stopped_while_it_unpacks(string compression)
    {
        using var layout = new Layout(ArchiveWithZeroPages(compression));

        var bomb = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout, new RestoreLimits { RatioCheckFloorBytes = 1 << 20 }));
        var staged = new FileInfo(Path.Combine(layout.Staging, "checkpoint", "pages-1.img"));

        Assert.Equal(ErrorKind.InvalidArgument, bomb.Kind);
        Assert.Contains($"checkpoint archive {layout.Archive} was refused at entry \"checkpoint/pages-1.img\": the archive expands to more than ", bomb.Message, StringComparison.Ordinal);
        Assert.Contains("compressed bytes, more than [restore] max_expansion_ratio = 100 allows", bomb.Message, StringComparison.Ordinal);
        Assert.True(!staged.Exists || staged.Length < 16 << 20, "the pages must not have been written out whole");
    }

    [Fact]
    public async Task A_checkpoint_archive_that_would_not_fit_on_the_staging_disk_is_refused_before_its_entry_is_written_and_a_trusted_one_unpacks()
    {
        using var layout = new Layout(ArchiveWithZeroPages("none"));
        // A disk with 8 MiB left after a 1 MiB reserve: the 16 MiB of pages do not fit.
        var small = new RestoreLimits { TargetFilesystem = layout.Root, DiskReserveBytes = 1 << 20, FreeBytesOf = _ => 9 << 20, Disks = new DiskLedger() };

        var full = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout, small));

        Assert.Equal(ErrorKind.ResourceExhausted, full.Kind);
        Assert.Contains($"checkpoint archive {layout.Archive} was refused at entry \"checkpoint/pages-1.img\" (16777216 bytes)", full.Message, StringComparison.Ordinal);
        Assert.Contains($"more than the 8388608 bytes free on {layout.Staging} after [restore] disk_reserve_bytes = 1048576", full.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(layout.Staging, "checkpoint", "pages-1.img")), "not a byte of the entry that does not fit may be written");

        using var roomy = new Layout(ArchiveWithZeroPages("gzip"));
        var plan = await ReadAsync(roomy, new RestoreLimits { MaxExpansionRatio = 0, RatioCheckFloorBytes = 1 << 20, TargetFilesystem = roomy.Root, FreeBytesOf = _ => 2L << 30, Disks = new DiskLedger() });
        Assert.Equal(16L << 20, new FileInfo(Path.Combine(roomy.Staging, "checkpoint", "pages-1.img")).Length);
        Assert.Equal("counter", plan.OriginalName);
    }

    [Fact]
    public async Task A_pod_checkpoint_archive_refused_for_its_expansion_leaves_no_staging_directory_behind()
    {
        using var layout = new Layout(ArchiveWithZeroPages("gzip"));
        var restores = Path.Combine(layout.Root, "restores");

        var bomb = await Assert.ThrowsAsync<CrestException>(() =>
            PodCheckpointSources.OpenArchiveAsync(layout.Archive, restores, new RestoreLimits { RatioCheckFloorBytes = 1 << 20 }, Ct));

        Assert.Contains($"pod checkpoint archive {layout.Archive} was refused at entry \"checkpoint/pages-1.img\"", bomb.Message, StringComparison.Ordinal);
        Assert.Empty(Directory.EnumerateFileSystemEntries(restores));
    }

    [Fact]
    public void Checkpoint_image_layers_on_the_staging_filesystem_are_staged_as_hard_links_taking_no_space()
    {
        using var dir = new TempDir("crest-ckpt-layers");
        var layer = WriteCheckpointLayerWith16MiBOfPages(dir.CreateDirectory("layer"));
        var staging = dir.CreateDirectory("staging");
        // 8 MiB free after the reserve: a copy of the 16 MiB of pages would not fit; a second name for them does.
        var small = new RestoreLimits { TargetFilesystem = dir.Path, DiskReserveBytes = 1 << 20, FreeBytesOf = _ => 9 << 20, Disks = new DiskLedger() };

        var plan = new CheckpointReader(small).ReadImageLayers([layer], "localhost/ckpt:v1", staging, Ct);

        Assert.Equal("counter", plan.OriginalName);
        var staged = Path.Combine(staging, "checkpoint", "pages-1.img");
        Assert.Equal(2UL, LinkCount(staged));
        File.Delete(Path.Combine(layer, "checkpoint", "pages-1.img"));
        Assert.Equal(16L << 20, new FileInfo(staged).Length);
    }

    /// <summary>An unpacked checkpoint image layer in <paramref name="layer"/>: containerd's files and 16 MiB of pages.</summary>
    private static string WriteCheckpointLayerWith16MiBOfPages(string layer)
    {
        foreach (var (name, content) in ContainerdFiles())
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(layer, name))!);
            File.WriteAllBytes(Path.Combine(layer, name), content);
        }

        File.WriteAllBytes(Path.Combine(layer, "checkpoint", "pages-1.img"), new byte[16 << 20]);
        return layer;
    }

    private static ulong LinkCount(string path)
    {
        var output = Process.Start(new ProcessStartInfo("stat", ["-c", "%h", path]) { RedirectStandardOutput = true })!;
        var text = output.StandardOutput.ReadToEnd();
        output.WaitForExit();
        return ulong.Parse(text.Trim(), CultureInfo.InvariantCulture);
    }

    [Fact]
    public void Checkpoint_image_layers_copied_from_another_filesystem_that_would_not_fit_on_the_staging_disk_are_refused_before_the_file_that_does_not_fit_is_copied()
    {
        using var dir = new TempDir("crest-ckpt-layers");
        // The layer on /dev/shm (tmpfs) and the staging directory on the temp dir's disk: no hard link across, so a copy.
        var layer = Path.Combine("/dev/shm", $"crest-ckpt-layer-{Guid.NewGuid():N}");
        try
        {
            WriteCheckpointLayerWith16MiBOfPages(layer);
            var staging = dir.CreateDirectory("staging");
            var small = new RestoreLimits { TargetFilesystem = dir.Path, DiskReserveBytes = 1 << 20, FreeBytesOf = _ => 9 << 20, Disks = new DiskLedger() };

            var full = Assert.Throws<CrestException>(() => new CheckpointReader(small).ReadImageLayers([layer], "localhost/ckpt:v1", staging, Ct));

            Assert.Equal(ErrorKind.ResourceExhausted, full.Kind);
            Assert.Contains("checkpoint image localhost/ckpt:v1 was refused at /checkpoint/pages-1.img (16777216 bytes)", full.Message, StringComparison.Ordinal);
            Assert.Contains($"more than the 8388608 bytes free on {staging} after [restore] disk_reserve_bytes = 1048576", full.Message, StringComparison.Ordinal);
            Assert.False(File.Exists(Path.Combine(staging, "checkpoint", "pages-1.img")));
        }
        finally
        {
            Directory.Delete(layer, recursive: true);
        }
    }

    [Fact]
    public async Task A_rootfs_diff_within_its_limits_reports_the_bytes_it_expands_to()
    {
        var files = ContainerdFiles();
        files[CheckpointFiles.RootfsDiff] = Compress(Tar(t => AddFile(t, "root/file", new byte[3000])), "gzip");
        using var layout = new Layout(Tar(files));

        var plan = await ReadAsync(layout);

        Assert.Equal(3000, plan.RootfsDiffBytes);
    }

    [Theory]
    [InlineData("/../../etc/shadow")]
    [InlineData("../x")]
    [InlineData("/a/../../x")]
    [InlineData("")]
    public async Task Deleted_files_with_a_path_out_of_the_rootfs_are_refused_while_reading(string hostile)
    {
        var files = ContainerdFiles();
        files[CheckpointFiles.DeletedFiles] = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(new List<string> { "/etc/motd", hostile }, CheckpointJson.Default.ListString));
        using var layout = new Layout(Tar(files));

        var e = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout));

        Assert.Contains("failed to read \"deleted.files\"", e.Message, StringComparison.Ordinal);
        Assert.Contains($"entry \"{hostile}\" is not a path inside", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("none")]
    [InlineData("gzip")]
    [InlineData("zstd")]
    public async Task A_compressed_archive_reads_the_same_as_a_plain_one(string compression)
    {
        var plain = Tar(ContainerdFiles());
        var packed = Compress(plain, compression);
        Assert.Equal(compression == "none", packed.SequenceEqual(plain));
        using var layout = new Layout(packed);

        var plan = await ReadAsync(layout);

        Assert.Equal(CheckpointEngine.Containerd, plan.Engine);
        Assert.Equal(AlpineDigest, plan.BaseImageDigestReference);
        Assert.Equal("counter", plan.OriginalName);
        Assert.Equal(CheckpointFiles.ContainerLog, plan.LogCopy);
        Assert.Equal(Inventory, await File.ReadAllBytesAsync(Path.Combine(layout.Staging, "checkpoint", "inventory.img"), Ct));
        Assert.Equal(LogBytes, await File.ReadAllBytesAsync(Path.Combine(layout.Staging, CheckpointFiles.ContainerLog), Ct));
    }

    private static byte[] Damage(byte[] packed, string damage)
    {
        if (damage == "truncated")
        {
            return packed[..(packed.Length / 2)];
        }

        // The magic stays (so the reader still detects the compression); the frame header and first block do not.
        var copy = (byte[])packed.Clone();
        for (var i = 4; i < 36 && i < copy.Length; i++)
        {
            copy[i] ^= 0xFF;
        }

        return copy;
    }

    [Theory]
    [InlineData("gzip", "truncated")]
    [InlineData("gzip", "corrupted")]
    [InlineData("zstd", "truncated")]
    [InlineData("zstd", "corrupted")]
    public async Task A_damaged_compressed_archive_is_refused_with_a_crest_exception(string compression, string damage)
    {
        var files = ContainerdFiles();
        files["checkpoint/pages-1.img"] = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Range(0, 4000).Select(i => i.ToString(CultureInfo.InvariantCulture))));
        using var layout = new Layout(Damage(Compress(Tar(files), compression), damage));

        var e = await Record.ExceptionAsync(() => ReadAsync(layout));

        Assert.True(e is CrestException { Kind: ErrorKind.InvalidArgument }, $"expected a CrestException, got {e}");
        Assert.Empty(layout.Strays());
    }

    [Theory]
    [InlineData("gzip")]
    [InlineData("zstd")]
    public async Task An_archive_whose_second_compressed_frame_is_garbage_is_refused_with_a_crest_exception(string compression)
    {
        // A valid first frame that ends inside a file's data, then a frame with the right magic and a garbage header:
        // the decompressor fails while the extractor is copying that file.
        var files = ContainerdFiles();
        files["checkpoint/pages-1.img"] = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Range(0, 20000).Select(i => i.ToString(CultureInfo.InvariantCulture))));
        var plain = Tar(files);
        byte[] magic = compression == "gzip" ? [0x1f, 0x8b] : [0x28, 0xb5, 0x2f, 0xfd];
        byte[] packed = [.. Compress(plain[..(plain.Length - 1024 - 32768)], compression), .. magic, .. Enumerable.Repeat((byte)0xFF, 64)];
        using var layout = new Layout(packed);

        var e = await Record.ExceptionAsync(() => ReadAsync(layout));

        Assert.True(e is CrestException { Kind: ErrorKind.InvalidArgument }, $"expected a CrestException, got {e}");
        Assert.Empty(layout.Strays());
    }

    // ---- 5. metadata limits and malformed metadata ------------------------------------------------------

    [Fact]
    public async Task A_config_dump_larger_than_the_metadata_limit_is_refused()
    {
        var files = ContainerdFiles();
        files[CheckpointFiles.ConfigDump] = [.. files[CheckpointFiles.ConfigDump], .. Enumerable.Repeat((byte)' ', 8192)];
        using var layout = new Layout(Tar(files));

        var e = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout, new RestoreLimits { MaxMetadataBytes = 4096 }));

        Assert.Contains("failed to read \"config.dump\"", e.Message, StringComparison.Ordinal);
        Assert.Contains("larger than 4096 bytes", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("not json {")]
    [InlineData("[1, 2]")]
    [InlineData("null")]
    [InlineData("\"a string\"")]
    [InlineData("{\"checkpointedTime\": \"yesterday\"}")]
    [InlineData("{\"rootfsImageRef\": 42}")]
    public async Task A_config_dump_that_is_not_the_expected_json_is_refused_by_name(string content)
    {
        var files = ContainerdFiles();
        files[CheckpointFiles.ConfigDump] = Encoding.UTF8.GetBytes(content);
        using var layout = new Layout(Tar(files));

        var e = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Contains("failed to read \"config.dump\"", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("spec.dump", "not json {")]
    [InlineData("spec.dump", "[1, 2]")]
    [InlineData("status.dump", "{\"annotations\": ")]
    [InlineData("status.dump", "{\"labels\": [1]}")]
    [InlineData("bind.mounts", "{\"source\": 1}")]
    [InlineData("bind.mounts", "[{\"permissions\": \"rwx\"}]")]
    public async Task Each_metadata_file_that_is_not_the_expected_json_is_refused_by_name(string file, string content)
    {
        var files = ContainerdFiles();
        files[file] = Encoding.UTF8.GetBytes(content);
        using var layout = new Layout(Tar(files));

        var e = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Contains($"failed to read \"{file}\"", e.Message, StringComparison.Ordinal);
        Assert.Empty(layout.Strays());
    }

    [Theory]
    [InlineData(100)]
    [InlineData(700)]
    [InlineData(1500)]
    public async Task A_truncated_archive_is_refused_as_malformed(int keep)
    {
        var whole = Tar(ContainerdFiles());
        using var layout = new Layout(whole[..Math.Min(keep, whole.Length - 1)]);

        var e = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Empty(layout.Strays());
    }

    [Fact]
    public async Task A_base_image_name_that_is_not_an_image_reference_is_refused()
    {
        var files = ContainerdFiles();
        files.Remove(CheckpointFiles.StatusDump);
        files[CheckpointFiles.ConfigDump] = Utf8(ContainerdConfig(rootfsImageName: "UPPER CASE!!"));
        using var layout = new Layout(Tar(files));

        var e = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Contains("\"UPPER CASE!!\", which is not an image reference", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_cri_o_annotations_value_that_is_not_a_json_map_is_refused_by_name()
    {
        var files = CrioFiles();
        var spec = JsonNode.Parse(files[CheckpointFiles.SpecDump])!.AsObject();
        spec["annotations"]!["io.kubernetes.cri-o.Annotations"] = "[\"not\", \"a map\"]";
        files[CheckpointFiles.SpecDump] = Utf8(spec);
        using var layout = new Layout(Tar(files));

        var e = await Assert.ThrowsAsync<CrestException>(() => ReadAsync(layout));

        Assert.Contains("io.kubernetes.cri-o.Annotations is not a JSON map of strings", e.Message, StringComparison.Ordinal);
    }

    // ---- 6. annotations of the restored container -------------------------------------------------------

    [Theory]
    [InlineData("registry.local/ckpt:v1", "registry.local/ckpt:v1")]
    [InlineData(null, "/var/lib/checkpoints/counter.tar")]
    public void Restored_annotations_take_identity_from_the_request_and_drop_cdi_devices(string? userSpecified, string expectedImage)
    {
        var plan = new RestorePlan
        {
            Engine = CheckpointEngine.Containerd,
            SourceKind = CheckpointSourceKind.Archive,
            Source = "/var/lib/checkpoints/counter.tar",
            OriginalName = "counter",
            OriginalRuntime = "runc",
            CheckpointedAt = new DateTimeOffset(2026, 2, 3, 4, 5, 6, 500, TimeSpan.Zero),
            StagingDir = "/nonexistent",
            Labels = new Dictionary<string, string>(),
            Annotations = new Dictionary<string, string>
            {
                ["io.kubernetes.container.hash"] = "A",
                ["io.kubernetes.container.restartCount"] = "0",
                ["io.kubernetes.pod.uid"] = "old",
                ["cdi.k8s.io/device"] = "gpu",
                ["cdi.k8s.io"] = "x",
                ["safe.annotation"] = "true",
            },
        };
        var request = new ContainerSpec
        {
            Name = "counter",
            Image = "/var/lib/checkpoints/counter.tar",
            UserSpecifiedImage = userSpecified,
            Annotations = new Dictionary<string, string>
            {
                ["io.kubernetes.container.hash"] = "B",
                ["io.kubernetes.container.restartCount"] = "3",
                ["other"] = "req",
            },
        };
        var sandbox = new SandboxRecord
        {
            Id = new string('s', 64),
            Spec = new PodSpec { Name = "counters", Uid = "new-uid", Namespace = "default" },
            State = SandboxState.Ready,
            CreatedAt = DateTimeOffset.UnixEpoch,
            RuntimeHandler = "runc",
        };

        var result = RestoreService.AdaptAnnotations(plan, request, sandbox, request.UserSpecifiedImage is { Length: > 0 } u ? u : request.Image, NullLogger.Instance);

        Assert.Equal(
            ["checkpointImage", "checkpointedAt", "io.kubernetes.container.hash", "io.kubernetes.container.restartCount", "io.kubernetes.pod.uid", "restored", "safe.annotation"],
            result.Keys.Order(StringComparer.Ordinal));
        Assert.Equal("B", result["io.kubernetes.container.hash"]);
        Assert.Equal("3", result["io.kubernetes.container.restartCount"]);
        Assert.Equal("new-uid", result["io.kubernetes.pod.uid"]);
        Assert.Equal("true", result["safe.annotation"]);
        Assert.Equal("true", result["restored"]);
        Assert.Equal(plan.CheckpointedAt, DateTimeOffset.Parse(result["checkpointedAt"], CultureInfo.InvariantCulture));
        Assert.Equal(expectedImage, result["checkpointImage"]);
    }

    // ---- 7. CRIU statistics -----------------------------------------------------------------------------

    private static byte[] StatsFile(byte[] payload, uint magic1 = CriuStats.ServiceMagic, uint magic2 = CriuStats.StatsMagic, uint? size = null)
    {
        var file = new byte[12 + payload.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(file, magic1);
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(4), magic2);
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(8), size ?? (uint)payload.Length);
        payload.CopyTo(file, 12);
        return file;
    }

    private static byte[] ValidStatsPayload() => new stats_entry
    {
        Dump = new dump_stats_entry
        {
            FreezingTime = 11,
            FrozenTime = 1234,
            MemdumpTime = 33,
            MemwriteTime = 44,
            PagesScanned = 500,
            PagesSkippedParent = 0,
            PagesWritten = 99,
            PagesLazy = 0,
        },
    }.ToByteArray();

    [Fact]
    public void A_criu_stats_file_parses_into_dump_statistics()
    {
        var stats = CriuStats.ParseDump(StatsFile(ValidStatsPayload()), "stats-dump");

        Assert.Equal(new DumpStatistics(11, 1234, 33, 44, 500, 99), stats);
    }

    public static TheoryData<string, byte[]> MalformedStats()
    {
        var valid = ValidStatsPayload();
        return new TheoryData<string, byte[]>
        {
            { "empty file", [] },
            { "truncated header", StatsFile(valid)[..8] },
            { "header one byte short", StatsFile(valid)[..11] },
            { "wrong first magic", StatsFile(valid, magic1: 0x54564319) },
            { "wrong second magic", StatsFile(valid, magic2: 0x57093307) },
            { "size beyond the file", StatsFile(valid, size: (uint)valid.Length + 1) },
            { "size far beyond the file", StatsFile(valid, size: 100_000) },
            { "size uint max", StatsFile(valid, size: uint.MaxValue) },
            { "garbage protobuf", StatsFile([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]) },
            { "truncated length-delimited field", StatsFile([0x0A, 0x05, 0x08]) },
            { "unterminated group", StatsFile([0x0B]) },
            { "no dump statistics", StatsFile([]) },
        };
    }

    [Theory]
    [MemberData(nameof(MalformedStats))]
    public void A_malformed_criu_stats_file_throws_only_a_crest_exception(string why, byte[] file)
    {
        var e = Record.Exception(() => CriuStats.ParseDump(file, "stats-dump"));

        Assert.True(e is CrestException { Kind: ErrorKind.InvalidArgument }, $"{why}: expected a CrestException, got {e?.GetType().FullName ?? "no exception"}: {e?.Message}");
        Assert.Contains("CRIU statistics stats-dump are malformed", e!.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Random_payloads_after_a_valid_header_never_throw_anything_but_a_crest_exception()
    {
        Gen.Byte.Array[0, 64].Sample(payload =>
        {
            try
            {
                CriuStats.ParseDump(StatsFile(payload), "random");
            }
            catch (CrestException)
            {
            }
        }, iter: 2000);
    }

    // ---- 8. checkpoint location -------------------------------------------------------------------------

    [Theory]
    [InlineData("relative")]
    [InlineData("empty")]
    [InlineData("missing parent")]
    [InlineData("dangling symlink")]
    [InlineData("symlink to a file")]
    [InlineData("directory")]
    public void A_checkpoint_location_that_is_not_a_fresh_file_path_is_refused(string kind)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.Combine("existing.tar"), "old");
        var location = kind switch
        {
            "relative" => "checkpoints/counter.tar",
            "empty" => "",
            "missing parent" => dir.Combine("missing", "counter.tar"),
            "dangling symlink" => File.CreateSymbolicLink(dir.Combine("dangling.tar"), dir.Combine("nowhere.tar")).FullName,
            "symlink to a file" => File.CreateSymbolicLink(dir.Combine("link.tar"), dir.Combine("existing.tar")).FullName,
            _ => dir.CreateDirectory("a-directory.tar"),
        };

        var e = Assert.Throws<CrestException>(() => CheckpointService.ValidateLocation(location));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Equal("old", File.ReadAllText(dir.Combine("existing.tar")));
        Assert.False(File.Exists(dir.Combine("nowhere.tar")));
    }

    [Fact]
    public void A_fresh_path_in_an_existing_directory_is_accepted_as_a_full_path()
    {
        using var dir = new TempDir();
        dir.CreateDirectory("sub");

        Assert.Equal(dir.Combine("counter.tar"), CheckpointService.ValidateLocation(dir.Combine("counter.tar")));
        Assert.Equal(dir.Combine("counter.tar"), CheckpointService.ValidateLocation(dir.Path + "/sub/../counter.tar"));
        Assert.False(File.Exists(dir.Combine("counter.tar")));
    }

    // ---- 9. rootfs diff round trip ----------------------------------------------------------------------

    /// <summary>A container record made from a checkpoint, for the rootfs steps.</summary>
    internal static ContainerRecord RestoredContainer() => Container();

    private static ContainerRecord Container() => new()
    {
        Id = new string('c', 64),
        SandboxId = new string('s', 64),
        Spec = new ContainerSpec { Name = "counter", Image = "docker.io/library/alpine:latest" },
        State = ContainerState.Created,
        CreatedAt = DateTimeOffset.UnixEpoch,
        ImageId = "sha256:" + Hex,
        ImageRef = AlpineDigest,
        RuntimeHandler = "runc",
    };

    internal static async Task MknodWhiteoutAsync(string path)
    {
        var mknod = Requires.Binary("mknod");
        var start = new ProcessStartInfo(mknod) { UseShellExecute = false, RedirectStandardError = true };
        foreach (var arg in new[] { path, "c", "0", "0" })
        {
            start.ArgumentList.Add(arg);
        }

        using var process = Process.Start(start)!;
        var error = await process.StandardError.ReadToEndAsync(Ct);
        await process.WaitForExitAsync(Ct);
        Assert.True(process.ExitCode == 0, $"mknod {path} c 0 0 failed: {error}");
    }

    [Fact]
    public async Task A_container_that_changed_nothing_gets_a_rootfs_diff_every_tar_reader_reads_as_empty()
    {
        using var dir = new TempDir();
        var upper = dir.CreateDirectory("upper");
        using var diff = new MemoryStream();

        var summary = await RootfsDiff.WriteAsync(upper, diff, [], Ct);

        Assert.Equal(0, summary.Entries);
        // A tar's end: two zero blocks. .NET's TarWriter writes none when it wrote no entry, and a 0-byte file is no tar.
        Assert.Equal(1024, diff.Length);
        diff.Position = 0;
        using var stream = CheckpointArchive.OpenRead(diff);
        using var reader = new TarReader(stream);
        Assert.Null(await reader.GetNextEntryAsync(copyData: false, Ct));
    }

    [Fact]
    public async Task A_rootfs_diff_records_whiteouts_as_markers_and_applies_back_as_deletions()
    {
        Requires.Root();
        using var dir = new TempDir();
        var upper = dir.CreateDirectory("upper");
        await File.WriteAllTextAsync(Path.Combine(upper, "newfile"), "new", Ct);
        Directory.CreateDirectory(Path.Combine(upper, "dir", "sub"));
        await File.WriteAllTextAsync(Path.Combine(upper, "dir", "sub", "file"), "nested", Ct);
        Directory.CreateDirectory(Path.Combine(upper, "etc"));
        await File.WriteAllTextAsync(Path.Combine(upper, "etc", "hosts"), "runtime-managed", Ct);
        await MknodWhiteoutAsync(Path.Combine(upper, "etc", "motd"));
        Assert.True(FileKinds.IsOverlayWhiteout(Path.Combine(upper, "etc", "motd")));

        using var diff = new MemoryStream();
        var summary = await RootfsDiff.WriteAsync(upper, diff, ["etc/hosts"], Ct);

        diff.Position = 0;
        var entries = new Dictionary<string, TarEntryType>(StringComparer.Ordinal);
        using (var reader = new TarReader(diff, leaveOpen: true))
        {
            while (await reader.GetNextEntryAsync(copyData: false, Ct) is { } entry)
            {
                entries[entry.Name.TrimEnd('/')] = entry.EntryType;
            }
        }

        Assert.Equal(["dir", "dir/sub", "dir/sub/file", "etc", "etc/.wh.motd", "newfile"], entries.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(TarEntryType.RegularFile, entries["etc/.wh.motd"]);
        Assert.DoesNotContain(entries.Values, t => t is TarEntryType.CharacterDevice or TarEntryType.BlockDevice);
        Assert.Equal(["/etc/motd", "/etc/.wh.motd"], summary.Deleted);
        Assert.Equal(entries.Count, summary.Entries);
        Assert.Equal("new".Length + "nested".Length, summary.Bytes);

        // Apply: the diff tar and deleted.files, as a restore finds them in its staging directory.
        var restoreDir = dir.CreateDirectory("restore");
        await File.WriteAllBytesAsync(Path.Combine(restoreDir, CheckpointFiles.RootfsDiff), diff.ToArray(), Ct);
        await File.WriteAllTextAsync(Path.Combine(restoreDir, CheckpointFiles.DeletedFiles), JsonSerializer.Serialize(summary.Deleted.ToList(), CheckpointJson.Default.ListString), Ct);
        var rootfs = dir.CreateDirectory("rootfs");
        Directory.CreateDirectory(Path.Combine(rootfs, "etc"));
        await File.WriteAllTextAsync(Path.Combine(rootfs, "etc", "motd"), "welcome", Ct);
        await File.WriteAllTextAsync(Path.Combine(rootfs, "etc", "hosts"), "image hosts", Ct);

        await PodRestoreHoldTests.NewRestoreSteps().ApplyRootfsAsync(restoreDir, rootfs, Container(), Ct);

        Assert.False(File.Exists(Path.Combine(rootfs, "etc", "motd")));
        Assert.False(File.Exists(Path.Combine(rootfs, "etc", ".wh.motd")));
        Assert.Equal("new", await File.ReadAllTextAsync(Path.Combine(rootfs, "newfile"), Ct));
        Assert.Equal("nested", await File.ReadAllTextAsync(Path.Combine(rootfs, "dir", "sub", "file"), Ct));
        Assert.Equal("image hosts", await File.ReadAllTextAsync(Path.Combine(rootfs, "etc", "hosts"), Ct));
    }

    [Theory]
    [InlineData("/../sentinel")]
    [InlineData("../sentinel")]
    [InlineData("/a/../../sentinel")]
    [InlineData("/./../sentinel")]
    [InlineData("/escape/sentinel")]
    [InlineData("/absolute/sentinel")]
    [InlineData("/absolute")]
    public async Task Deleted_files_never_remove_anything_outside_the_rootfs(string hostile)
    {
        using var dir = new TempDir();
        var sentinel = dir.Combine("sentinel");
        await File.WriteAllTextAsync(sentinel, "keep", Ct);
        var rootfs = dir.CreateDirectory("rootfs");
        Directory.CreateDirectory(Path.Combine(rootfs, "a"));
        await File.WriteAllTextAsync(Path.Combine(rootfs, "inside"), "x", Ct);
        File.CreateSymbolicLink(Path.Combine(rootfs, "escape"), "..");
        File.CreateSymbolicLink(Path.Combine(rootfs, "absolute"), dir.Path);
        var restoreDir = dir.CreateDirectory("restore");
        await File.WriteAllTextAsync(Path.Combine(restoreDir, CheckpointFiles.DeletedFiles), JsonSerializer.Serialize(new List<string> { hostile }, CheckpointJson.Default.ListString), Ct);

        var e = await Record.ExceptionAsync(() => PodRestoreHoldTests.NewRestoreSteps().ApplyRootfsAsync(restoreDir, rootfs, Container(), Ct));

        Assert.True(e is null or CrestException, $"expected a CrestException or nothing, got {e}");
        Assert.True(File.Exists(sentinel), $"deleted.files entry {hostile} removed a file outside the rootfs");
        Assert.Equal("keep", await File.ReadAllTextAsync(sentinel, Ct));
        Assert.True(File.Exists(Path.Combine(rootfs, "inside")));
        Assert.True(Directory.Exists(Path.Combine(rootfs, "a")));
    }

    // ---- 10. checkpoint image annotations ---------------------------------------------------------------

    [Theory]
    [InlineData("none")]
    [InlineData("gzip")]
    [InlineData("zstd")]
    public async Task Archive_metadata_reads_without_unpacking_and_names_the_checkpoint_for_every_engine(string compression)
    {
        var files = ContainerdFiles();
        files[CheckpointFiles.StatsDump] = StatsFile(ValidStatsPayload());
        using var dir = new TempDir();
        var archive = dir.Combine("archive.tar");
        await File.WriteAllBytesAsync(archive, Compress(Tar(files), compression), Ct);

        var metadata = await ArchiveMetadataReader.ReadAsync(archive, Ct);
        var annotations = CheckpointImageAnnotations.For(metadata);

        Assert.Equal(AlpineDigest, metadata.Config.RootfsImageRef);
        Assert.Equal("counter", metadata.SpecAnnotations["io.kubernetes.cri.container-name"]);
        Assert.Equal(1234u, metadata.Statistics?.FrozenTimeUs);
        Assert.Equal(99ul, metadata.Statistics?.PagesWritten);
        Assert.Equal(files.Count + 1, metadata.Entries); // the files and the checkpoint/ directory
        Assert.Equal("counter", annotations["org.criu.checkpoint.container.name"]);
        Assert.Equal("counter", annotations["io.kubernetes.cri-o.annotations.checkpoint.name"]);
        Assert.Equal("counter", annotations["io.podman.annotations.checkpoint.name"]);
        Assert.Equal("containerd", annotations["org.criu.checkpoint.engine.name"]);
        Assert.Equal("counters", annotations["org.criu.checkpoint.pod.name"]);
        Assert.Equal("default", annotations["org.criu.checkpoint.pod.namespace"]);
        Assert.Equal(AlpineDigest, annotations["org.criu.checkpoint.rootfsImageID"]);
        Assert.Equal("docker.io/library/alpine:latest", annotations["io.podman.annotations.checkpoint.rootfsImageName"]);
        Assert.Contains(RestoreService.CheckpointImageAnnotations, annotations.ContainsKey);
        Assert.All(RestoreService.CheckpointImageAnnotations, key => Assert.True(annotations.ContainsKey(key), key));
    }

    [Fact]
    public async Task Archive_metadata_of_a_cri_o_checkpoint_names_the_engine_cri_o()
    {
        using var dir = new TempDir();
        var archive = dir.Combine("archive.tar");
        await File.WriteAllBytesAsync(archive, Tar(CrioFiles()), Ct);

        var annotations = CheckpointImageAnnotations.For(await ArchiveMetadataReader.ReadAsync(archive, Ct));

        Assert.Equal("CRI-O", annotations["org.criu.checkpoint.engine.name"]);
        Assert.Equal(Hex, annotations["io.kubernetes.cri-o.annotations.checkpoint.rootfsImageID"]);
    }

    [Theory]
    [InlineData("spec.dump", "[1, 2]", "none")]
    [InlineData("spec.dump", "not json", "none")]
    [InlineData("config.dump", "not json", "none")]
    [InlineData("config.dump", "[1, 2]", "none")]
    [InlineData("stats-dump", "not criu", "none")]
    [InlineData("", "", "gzip-truncated")]
    [InlineData("", "", "gzip-corrupted")]
    [InlineData("", "", "zstd-truncated")]
    [InlineData("", "", "zstd-corrupted")]
    public async Task Archive_metadata_of_a_malformed_archive_is_refused_with_a_crest_exception(string file, string content, string packing)
    {
        var files = ContainerdFiles();
        files["checkpoint/pages-1.img"] = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Range(0, 4000).Select(i => i.ToString(CultureInfo.InvariantCulture))));
        if (file.Length > 0)
        {
            files[file] = Encoding.UTF8.GetBytes(content);
        }

        var bytes = Tar(files);
        if (packing != "none")
        {
            var parts = packing.Split('-');
            bytes = Damage(Compress(bytes, parts[0]), parts[1]);
        }

        using var dir = new TempDir();
        var archive = dir.Combine("archive.tar");
        await File.WriteAllBytesAsync(archive, bytes, Ct);

        var e = await Record.ExceptionAsync(() => ArchiveMetadataReader.ReadAsync(archive, Ct));

        Assert.True(e is CrestException { Kind: ErrorKind.InvalidArgument }, $"expected a CrestException, got {e}");
    }

    [Fact]
    public async Task Archive_metadata_of_an_archive_without_config_dump_is_refused()
    {
        var files = ContainerdFiles();
        files.Remove(CheckpointFiles.ConfigDump);
        using var dir = new TempDir();
        var archive = dir.Combine("archive.tar");
        await File.WriteAllBytesAsync(archive, Tar(files), Ct);

        var e = await Assert.ThrowsAsync<CrestException>(() => ArchiveMetadataReader.ReadAsync(archive, Ct));

        Assert.Contains("has no config.dump", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0, 300, 300)]
    [InlineData(60, 300, 300)]
    [InlineData(300, 300, 300)]
    [InlineData(900, 300, 900)]
    public void A_checkpoint_deadline_is_the_requests_timeout_never_below_the_default(int requested, int configured, int expected) =>
        Assert.Equal(TimeSpan.FromSeconds(expected), CheckpointService.EffectiveTimeout(TimeSpan.FromSeconds(requested), TimeSpan.FromSeconds(configured)));

    [Fact]
    public void An_upper_layer_whiteout_removes_what_a_lower_checkpoint_image_layer_staged()
    {
        Requires.Root();
        using var dir = new TempDir("crest-ckpt-layers");
        var lower = dir.CreateDirectory("lower");
        foreach (var (name, content) in ContainerdFiles())
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(lower, name))!);
            File.WriteAllBytes(Path.Combine(lower, name), content);
        }

        File.WriteAllBytes(Path.Combine(lower, CheckpointFiles.DeletedFiles), "[\"/etc/motd\"]"u8.ToArray());
        var upper = dir.CreateDirectory("upper");
        using (var mknod = System.Diagnostics.Process.Start("mknod", [Path.Combine(upper, CheckpointFiles.DeletedFiles), "c", "0", "0"]))
        {
            mknod.WaitForExit();
            Assert.Equal(0, mknod.ExitCode);
        }

        var staging = dir.CreateDirectory("staging");

        new CheckpointReader(new RestoreLimits()).ReadImageLayers([upper, lower], "localhost/ckpt:v1", staging, Ct);

        Assert.False(File.Exists(Path.Combine(staging, CheckpointFiles.DeletedFiles)), "the upper layer's whiteout must remove deleted.files");
        Assert.True(File.Exists(Path.Combine(staging, CheckpointFiles.ConfigDump)));
    }

    /// <summary>
    /// A Podman checkpoint image (<c>podman container checkpoint --create-image</c>) carries no checkpointedTime either:
    /// the copy out of the image's layer keeps inventory.img's time, which stands in for it; config.dump's time wins when there is one.
    /// </summary>
    [Fact]
    public void A_podman_checkpoint_image_takes_its_checkpoint_time_from_inventory_img_in_the_layer_and_config_dump_wins_over_it()
    {
        using var dir = new TempDir("crest-ckpt-podman-layer");
        var inventoryTime = new DateTime(2026, 11, 29, 1, 54, 48, DateTimeKind.Utc);
        string WriteLayer(string name, IReadOnlyDictionary<string, byte[]> files)
        {
            var layer = dir.CreateDirectory(name);
            foreach (var (file, content) in files)
            {
                Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(layer, file))!);
                File.WriteAllBytes(Path.Combine(layer, file), content);
            }

            File.SetLastWriteTimeUtc(Path.Combine(layer, "checkpoint", "inventory.img"), inventoryTime);
            return layer;
        }

        var podman = new CheckpointReader(new RestoreLimits()).ReadImageLayers([WriteLayer("podman", PodmanFiles())], "localhost/podman-ckpt:v1", dir.CreateDirectory("staging-podman"), Ct);
        var containerd = new CheckpointReader(new RestoreLimits()).ReadImageLayers([WriteLayer("containerd", ContainerdFiles())], "localhost/ckpt:v1", dir.CreateDirectory("staging-containerd"), Ct);

        Assert.Equal(CheckpointEngine.Podman, podman.Engine);
        Assert.Equal(new DateTimeOffset(inventoryTime), podman.CheckpointedAt);
        Assert.Equal(CheckpointedAt, containerd.CheckpointedAt);
    }
}
