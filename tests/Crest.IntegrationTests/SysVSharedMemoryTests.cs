using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Crest.Core;
using Crest.Linux;
using Crest.TestKit;

namespace Crest.IntegrationTests;

/// <summary>
/// A pod IPC namespace's System V shared memory saved and put back into a fresh namespace with the same ids, keys,
/// sizes, modes, owners and bytes, checked with util-linux's ipcs from inside the namespaces.
/// </summary>
public sealed partial class SysVSharedMemoryTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    // Ids with a sequence number (2 * 32768 + 7) and without, a key and IPC_PRIVATE, owners that are not root.
    private static readonly SysVShmSegment Named = new(Id: 65543, Key: 0x0C4E5701, Size: 10_000, Mode: Convert.ToUInt32("640", 8), Uid: 1000, Gid: 2000);
    private static readonly SysVShmSegment Anonymous = new(Id: 3, Key: 0, Size: 4096 * 3 + 1, Mode: Convert.ToUInt32("600", 8), Uid: 0, Gid: 33);

    private static void RequireTools()
    {
        Requires.Root();
        Requires.Binary("unshare");
        Requires.Binary("nsenter");
        Requires.Binary("ipcs");
        Requires.Binary("ipcmk");
    }

    private static byte[] Pattern(SysVShmSegment s) =>
        [.. Enumerable.Range(0, (int)s.Size).Select(i => (byte)((i * 31) + s.Id))];

    private static byte[] Image(params SysVShmSegment[] segments)
    {
        using var image = new MemoryStream();
        SysVShmImage.WriteHeader(image, segments);
        foreach (var s in segments)
        {
            image.Write(Pattern(s));
        }

        return image.ToArray();
    }

    private static SysVShmSummary Restore(IpcNamespace ns, byte[] image)
    {
        using var input = new MemoryStream(image);
        return SysVSharedMemory.Restore(ns.File, input, 1 << 20, Ct);
    }

    /// <summary>Every segment of the namespace and its bytes, read back through Save.</summary>
    private static List<(SysVShmSegment Segment, byte[] Bytes)> Contents(IpcNamespace ns)
    {
        using var image = new MemoryStream();
        SysVSharedMemory.Save(ns.File, image, Ct);
        image.Position = 0;
        var result = new List<(SysVShmSegment, byte[])>();
        foreach (var s in SysVShmImage.ReadHeader(image, long.MaxValue))
        {
            using var bytes = new MemoryStream();
            SysVShmImage.CopyContents(image, s, bytes, Ct);
            result.Add((s, bytes.ToArray()));
        }

        return result;
    }

    [Fact]
    public void Segments_come_back_in_a_fresh_namespace_with_their_ids_keys_sizes_modes_owners_and_bytes()
    {
        RequireTools();
        using var source = IpcNamespace.Start();
        using var target = IpcNamespace.Start();
        Restore(source, Image(Named, Anonymous));
        // One made by another program too, with the id the kernel chose and a key of ipcmk's choosing.
        var made = int.Parse(ShmIdMade().Match(source.Run("ipcmk", "-M", "5000", "-p", "0604")).Groups[1].Value, CultureInfo.InvariantCulture);
        var before = source.Segments();
        Assert.Equal(3, before.Count);

        using var image = new MemoryStream();
        var saved = SysVSharedMemory.Save(source.File, image, Ct);
        image.Position = 0;
        var restored = SysVSharedMemory.Restore(target.File, image, 1 << 20, Ct);

        Assert.Equal(new SysVShmSummary(3, 10_000 + 12_289 + 5000, 0), saved);
        Assert.Equal(saved, restored);
        Assert.Equal(before, target.Segments());
        Assert.Contains(new IpcsSegment(Named.Id, "0x0c4e5701", "640", 10_000, 1000, 2000), before);
        Assert.Contains(new IpcsSegment(Anonymous.Id, "0x00000000", "600", 12_289, 0, 33), before);
        var contents = Contents(target);
        Assert.Equal(Pattern(Named), contents.Single(c => c.Segment.Id == Named.Id).Bytes);
        Assert.Equal(Pattern(Anonymous), contents.Single(c => c.Segment.Id == Anonymous.Id).Bytes);
        Assert.Equal(new byte[5000], contents.Single(c => c.Segment.Id == made).Bytes);
        Assert.Equal("-1", target.Run("cat", "/proc/sys/kernel/shm_next_id").Trim());
    }

    [Fact]
    public void A_namespace_with_a_message_queue_or_a_semaphore_set_is_refused_by_save()
    {
        RequireTools();
        using var ns = IpcNamespace.Start();
        Restore(ns, Image(Named));
        ns.Run("ipcmk", "-Q");
        ns.Run("ipcmk", "-S", "2");
        var output = Path.Combine(Path.GetTempPath(), $"crest-shm-{Guid.NewGuid():N}.img");

        var e = Assert.Throws<CrestException>(() => new LinuxSyscalls().SaveSysVSharedMemory(ns.File, output, Ct));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains("1 System V message queue(s) and 1 semaphore set(s)", e.Message, StringComparison.Ordinal);
        Assert.Contains("saves only shared memory segments", e.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(output));
    }

    [Fact]
    public void The_file_variants_save_to_a_private_file_and_restore_from_it()
    {
        RequireTools();
        using var source = IpcNamespace.Start();
        using var target = IpcNamespace.Start();
        Restore(source, Image(Named));
        var output = Path.Combine(Path.GetTempPath(), $"crest-shm-{Guid.NewGuid():N}.img");
        try
        {
            var linux = new LinuxSyscalls();
            linux.SaveSysVSharedMemory(source.File, output, Ct);
            linux.RestoreSysVSharedMemory(target.File, output, 1 << 20, Ct);

            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(output));
            Assert.Equal(source.Segments(), target.Segments());
            Assert.Throws<IOException>(() => linux.SaveSysVSharedMemory(source.File, output, Ct));
        }
        finally
        {
            File.Delete(output);
        }
    }

    [Fact]
    public void A_restore_into_a_namespace_that_already_has_a_wanted_id_is_refused_and_leaves_nothing_behind()
    {
        RequireTools();
        using var ns = IpcNamespace.Start();
        ns.Run("sh", "-c", $"echo {Named.Id} > /proc/sys/kernel/shm_next_id && ipcmk -M 100");
        var existing = Assert.Single(ns.Segments());

        // The free id comes first in the image: nothing may be created before the clash is seen.
        var e = Assert.Throws<CrestException>(() => Restore(ns, Image(Anonymous, Named)));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains($"{Named.Id}", e.Message, StringComparison.Ordinal);
        Assert.Equal([existing], ns.Segments());
    }

    [Fact]
    public void A_restore_that_fails_halfway_removes_the_segments_it_created()
    {
        RequireTools();
        using var ns = IpcNamespace.Start();
        var image = Image(Anonymous, Named);

        var e = Assert.Throws<CrestException>(() => Restore(ns, image[..^1]));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Contains($"of segment {Named.Id}", e.Message, StringComparison.Ordinal);
        Assert.Empty(ns.Segments());
        Assert.Equal("-1", ns.Run("cat", "/proc/sys/kernel/shm_next_id").Trim());
    }

    [Fact]
    public void A_key_already_in_use_fails_the_restore_and_removes_the_segments_created_before_it()
    {
        RequireTools();
        using var ns = IpcNamespace.Start();
        ns.Run("ipcmk", "-M", "100");
        var existing = Assert.Single(ns.Segments());
        var key = int.Parse(existing.Key[2..], NumberStyles.HexNumber, CultureInfo.InvariantCulture);

        var e = Assert.Throws<CrestException>(() => Restore(ns, Image(Anonymous, Named with { Key = key })));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains($"key {existing.Key}", e.Message, StringComparison.Ordinal);
        Assert.Equal([existing], ns.Segments());
    }

    [Fact]
    public void A_namespace_that_destroys_unattached_segments_is_refused_for_restore()
    {
        RequireTools();
        var host = File.ReadAllText("/proc/sys/kernel/shm_rmid_forced");
        using var ns = IpcNamespace.Start();
        ns.Run("sh", "-c", "echo 1 > /proc/sys/kernel/shm_rmid_forced");

        var e = Assert.Throws<CrestException>(() => Restore(ns, Image(Named)));

        Assert.Equal(ErrorKind.FailedPrecondition, e.Kind);
        Assert.Contains("shm_rmid_forced=1", e.Message, StringComparison.Ordinal);
        Assert.Empty(ns.Segments());
        Assert.Equal(host, File.ReadAllText("/proc/sys/kernel/shm_rmid_forced"));
    }

    [GeneratedRegex(@"Shared memory id: (\d+)")]
    private static partial Regex ShmIdMade();

    /// <summary>A segment as ipcs reports it: id, key, permissions, size and owner.</summary>
    private sealed record IpcsSegment(int Id, string Key, string Perms, long Bytes, uint Uid, uint Gid);

    /// <summary>A fresh IPC namespace held by `unshare --ipc sleep`, killed on dispose.</summary>
    private sealed partial class IpcNamespace : IDisposable
    {
        private readonly Process _holder;

        private IpcNamespace(Process holder) => _holder = holder;

        public string File => $"/proc/{_holder.Id}/ns/ipc";

        public static IpcNamespace Start()
        {
            var ns = new IpcNamespace(Process.Start(new ProcessStartInfo("unshare", ["--ipc", "sleep", "60"]))!);
            var mine = new FileInfo("/proc/self/ns/ipc").LinkTarget;
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (new FileInfo(ns.File).LinkTarget == mine)
            {
                if (DateTime.UtcNow > deadline)
                {
                    ns.Dispose();
                    throw new TimeoutException("unshare --ipc did not enter a new IPC namespace within 10 s");
                }

                Thread.Sleep(10);
            }

            return ns;
        }

        /// <summary>Runs a command inside the namespace; a failure fails the test with its stderr.</summary>
        public string Run(params string[] command)
        {
            var start = new ProcessStartInfo("nsenter", [$"--ipc={File}", .. command]) { RedirectStandardOutput = true, RedirectStandardError = true };
            start.Environment["LC_ALL"] = "C";
            using var p = Process.Start(start)!;
            var error = p.StandardError.ReadToEndAsync();
            var output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            Assert.True(p.ExitCode == 0, $"nsenter {string.Join(' ', command)} exited {p.ExitCode}: {error.Result}");
            return output;
        }

        /// <summary>The segments from `ipcs -m` (key, id, perms, bytes) and `ipcs -m -i ID` (uid, gid), by id.</summary>
        public List<IpcsSegment> Segments()
        {
            var result = new List<IpcsSegment>();
            foreach (Match m in IpcsLine().Matches(Run("ipcs", "-m")))
            {
                var id = int.Parse(m.Groups["id"].Value, CultureInfo.InvariantCulture);
                var owner = IpcsOwner().Match(Run("ipcs", "-m", "-i", m.Groups["id"].Value));
                Assert.True(owner.Success, $"ipcs -m -i {id} shows no uid= gid=");
                result.Add(new IpcsSegment(
                    id,
                    m.Groups["key"].Value,
                    m.Groups["perms"].Value,
                    long.Parse(m.Groups["bytes"].Value, CultureInfo.InvariantCulture),
                    uint.Parse(owner.Groups["uid"].Value, CultureInfo.InvariantCulture),
                    uint.Parse(owner.Groups["gid"].Value, CultureInfo.InvariantCulture)));
            }

            return [.. result.OrderBy(s => s.Id)];
        }

        public void Dispose()
        {
            try
            {
                _holder.Kill();
                _holder.WaitForExit();
            }
            catch (InvalidOperationException)
            {
                // Already gone.
            }

            _holder.Dispose();
        }

        [GeneratedRegex(@"^(?<key>0x[0-9a-f]{8})\s+(?<id>\d+)\s+\S+\s+(?<perms>[0-7]+)\s+(?<bytes>\d+)", RegexOptions.Multiline)]
        private static partial Regex IpcsLine();

        [GeneratedRegex(@"uid=(?<uid>\d+)\s+gid=(?<gid>\d+)")]
        private static partial Regex IpcsOwner();
    }
}
