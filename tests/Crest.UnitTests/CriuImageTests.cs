using System.Buffers.Binary;
using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Criu.Api.Images;
using Crest.TestKit;
using CsCheck;
using Google.Protobuf;

namespace Crest.UnitTests;

/// <summary>The CRIU image parser (untrusted bytes) and the restore policy built on it.</summary>
public class CriuImageTests
{
    private const uint Common = 0x54564319;
    private const uint Pstree = 0x50273030;
    private const uint Core = 0x55053847;

    private static byte[] Image(uint magic, params IMessage[] entries)
    {
        using var ms = new MemoryStream();
        Span<byte> word = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(word, Common);
        ms.Write(word);
        BinaryPrimitives.WriteUInt32LittleEndian(word, magic);
        ms.Write(word);
        foreach (var e in entries)
        {
            var payload = e.ToByteArray();
            BinaryPrimitives.WriteUInt32LittleEndian(word, (uint)payload.Length);
            ms.Write(word);
            ms.Write(payload);
        }

        return ms.ToArray();
    }

    private static core_entry CoreFor(uint uid, ulong caps, seccomp_mode seccomp) => new()
    {
        Mtype = core_entry.Types.march.X8664,
        ThreadCore = new thread_core_entry
        {
            FutexRla = 0,
            FutexRlaLen = 0,
            Comm = "sh",
            SeccompMode = seccomp,
            Creds = new creds_entry
            {
                Uid = uid, Euid = uid, Suid = uid, Fsuid = uid, Gid = 0, Egid = 0, Sgid = 0, Fsgid = 0, Secbits = 0,
                CapEff = { (uint)caps, (uint)(caps >> 32) },
                CapPrm = { (uint)caps, (uint)(caps >> 32) },
                CapBnd = { (uint)caps, (uint)(caps >> 32) },
            },
        },
    };

    private static string WriteCheckpoint(TempDir dir, params (uint Pid, core_entry Core)[] tasks)
    {
        var images = dir.CreateDirectory("checkpoint");
        File.WriteAllBytes(Path.Combine(images, "pstree.img"), Image(Pstree, [.. tasks.Select(t => (IMessage)new pstree_entry { Pid = t.Pid, Ppid = 0, Pgid = t.Pid, Sid = t.Pid, Threads = { t.Pid } })]));
        foreach (var (pid, core) in tasks)
        {
            File.WriteAllBytes(Path.Combine(images, $"core-{pid}.img"), Image(Core, core));
        }

        return images;
    }

    [Fact]
    public void Threads_carry_their_credentials_capabilities_and_seccomp_mode()
    {
        using var dir = new TempDir("crest-criu");
        var caps = RestorePolicy.Mask(["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_CHECKPOINT_RESTORE"]);
        var images = WriteCheckpoint(dir, (1, CoreFor(0, caps, seccomp_mode.Filter)), (7, CoreFor(1000, 0, seccomp_mode.Disabled)));

        var threads = CriuImages.ReadThreads(images);

        Assert.Equal(2, threads.Count);
        Assert.Equal(caps, threads[0].Effective);
        Assert.Equal("filter", threads[0].Seccomp);
        Assert.Equal([1000u, 1000u, 1000u, 1000u], threads[1].Uids);
        Assert.Equal("CAP_CHOWN,CAP_SYS_ADMIN,CAP_CHECKPOINT_RESTORE", RestorePolicy.Names(caps));
    }

    [Fact]
    public void The_policy_names_the_task_the_field_the_claim_and_the_grant()
    {
        using var dir = new TempDir("crest-criu");
        var images = WriteCheckpoint(dir, (1, CoreFor(0, RestorePolicy.Mask(["CAP_CHOWN", "CAP_SYS_ADMIN"]), seccomp_mode.Disabled)));
        var threads = CriuImages.ReadThreads(images);

        var defaults = RestorePolicy.Evaluate(threads, new SecuritySpec());
        var strict = RestorePolicy.Evaluate(threads, new SecuritySpec { RunAsNonRoot = true, Seccomp = SeccompMode.RuntimeDefault, DropCapabilities = ["ALL"] });
        var privileged = RestorePolicy.Evaluate(threads, new SecuritySpec { Privileged = true });

        Assert.All(defaults, v => Assert.Equal("capabilities", v.Check));
        Assert.Contains(defaults, v => v.ToString().Contains("task 1 (sh): effective capabilities is CAP_SYS_ADMIN beyond the grant", StringComparison.Ordinal));
        Assert.Contains(strict, v => v.Check == "users" && v.Allowed.Contains("run_as_non_root", StringComparison.Ordinal));
        Assert.Contains(strict, v => v.Check == "seccomp");
        Assert.Contains(strict, v => v.Check == "capabilities" && v.Claimed.StartsWith("CAP_CHOWN,CAP_SYS_ADMIN", StringComparison.Ordinal));
        Assert.Empty(privileged);
    }

    [Fact]
    public void Each_thread_names_the_architecture_it_was_dumped_on()
    {
        using var dir = new TempDir("crest-criu");
        var arm = CoreFor(0, 0, seccomp_mode.Disabled);
        arm.Mtype = core_entry.Types.march.Aarch64;
        var images = WriteCheckpoint(dir, (1, CoreFor(0, 0, seccomp_mode.Disabled)), (2, arm));

        var threads = CriuImages.ReadThreads(images);

        Assert.Equal("x86_64", threads[0].Architecture);
        Assert.Equal("aarch64", threads[1].Architecture);
        Assert.Equal(System.Runtime.InteropServices.RuntimeInformation.OSArchitecture == System.Runtime.InteropServices.Architecture.X64 ? "x86_64" : "aarch64", CriuImages.HostArchitecture);
    }

    [Theory]
    [InlineData(new byte[] { })]
    [InlineData(new byte[] { 0x19, 0x43 })]
    [InlineData(new byte[] { 0x19, 0x43, 0x56, 0x54 })]
    [InlineData(new byte[] { 0x19, 0x43, 0x56, 0x54, 0x47, 0x38, 0x05, 0x55, 0xff, 0xff, 0xff, 0xff })]
    [InlineData(new byte[] { 0x19, 0x43, 0x56, 0x54, 0x47, 0x38, 0x05, 0x55, 0x02, 0x00 })]
    [InlineData(new byte[] { 0x19, 0x43, 0x56, 0x54, 0x30, 0x30, 0x27, 0x50 })]
    public void A_malformed_core_image_is_a_clear_error(byte[] bytes)
    {
        using var dir = new TempDir("crest-criu");
        var images = WriteCheckpoint(dir, (1, CoreFor(0, 0, seccomp_mode.Disabled)));
        File.WriteAllBytes(Path.Combine(images, "core-1.img"), bytes);

        var e = Assert.Throws<CrestException>(() => CriuImages.ReadThreads(images));

        Assert.Contains("core-1.img", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Random_bytes_after_a_valid_magic_never_throw_anything_but_a_crest_exception()
    {
        Gen.Byte.Array[0, 256].Sample(tail =>
        {
            var file = new byte[8 + tail.Length];
            BinaryPrimitives.WriteUInt32LittleEndian(file, Common);
            BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(4), Core);
            tail.CopyTo(file, 8);
            try
            {
                foreach (var entry in CriuImages.Entries(file, Core, "core-1.img"))
                {
                    try
                    {
                        core_entry.Parser.ParseFrom(entry.Span);
                    }
                    catch (InvalidProtocolBufferException)
                    {
                        // What ReadThreads turns into a CrestException.
                    }
                }
            }
            catch (CrestException)
            {
            }
        }, iter: 3000);
    }

    // ---- namespaces, mounts, tmpfs contents -------------------------------------------------------------

    private const uint Ids = 0x54432030;
    private const uint Mounts = 0x55563928;

    private static task_kobj_ids_entry IdsOf(uint net, uint user = 7) => new()
    {
        VmId = 1, FilesId = 1, FsId = 1, SighandId = 1, PidNsId = 9, NetNsId = net, IpcNsId = 11, UtsNsId = 12, MntNsId = 13, UserNsId = user, CgroupNsId = 8,
    };

    private static mnt_entry MountAt(string mountPoint, fstype type, bool external = false, uint device = 50, string root = "/", string fsname = "") => new()
    {
        Fstype = (uint)type, MntId = 1, RootDev = device, ParentMntId = 0, Flags = 0, Root = root, Mountpoint = mountPoint, Source = type.ToString().ToLowerInvariant(),
        Options = "", ExtKey = external ? mountPoint : "", Fsname = fsname,
    };

    /// <summary>Two tasks with namespaces, a mount namespace and /dev contents with the given extra tar entries.</summary>
    private static string WriteIsolation(TempDir dir, uint secondNet, IEnumerable<mnt_entry> extraMounts, Action<System.Formats.Tar.TarWriter>? devContents = null)
    {
        var images = WriteCheckpoint(dir, (1, CoreFor(0, 0, seccomp_mode.Disabled)), (7, CoreFor(0, 0, seccomp_mode.Disabled)));
        File.WriteAllBytes(Path.Combine(images, "ids-1.img"), Image(Ids, IdsOf(10)));
        File.WriteAllBytes(Path.Combine(images, "ids-7.img"), Image(Ids, IdsOf(secondNet)));
        File.WriteAllBytes(Path.Combine(images, "mountpoints-13.img"), Image(Mounts,
        [
            MountAt("/", fstype.Overlayfs, device: 40), MountAt("/proc", fstype.Proc), MountAt("/dev", fstype.Tmpfs, device: 99),
            MountAt("/dev/pts", fstype.Devpts), MountAt("/proc/kcore", fstype.Tmpfs, external: true, device: 99, root: "/null"),
            MountAt("/sys/fs/cgroup/memory", fstype.Cgroup, external: true), .. extraMounts,
        ]));
        using (var file = File.Create(Path.Combine(images, "tmpfs-dev-99.tar.gz.img")))
        using (var gzip = new System.IO.Compression.GZipStream(file, System.IO.Compression.CompressionLevel.Fastest))
        using (var tar = new System.Formats.Tar.TarWriter(gzip, System.Formats.Tar.TarEntryFormat.Pax))
        {
            tar.WriteEntry(new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.Directory, "./"));
            tar.WriteEntry(new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.CharacterDevice, "./null") { DeviceMajor = 1, DeviceMinor = 3 });
            tar.WriteEntry(new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.SymbolicLink, "./fd") { LinkName = "/proc/self/fd" });
            devContents?.Invoke(tar);
        }

        return images;
    }

    private static IReadOnlyList<PolicyViolation> Isolation(string images, ContainerSpec? request = null, long maxTmpfsBytes = 1 << 20) =>
        RestorePolicy.EvaluateIsolation(CriuImages.ReadIsolation(images, maxTmpfsBytes), request ?? new ContainerSpec { Name = "c", Image = "i" }, [], new Dictionary<uint, string> { [1] = "sh", [7] = "sleep" });

    [Fact]
    public void A_checkpoint_with_only_the_containers_namespaces_mounts_and_devices_passes()
    {
        using var dir = new TempDir("crest-criu");
        var images = WriteIsolation(dir, 10, []);

        var isolation = CriuImages.ReadIsolation(images, 1 << 20);

        Assert.Empty(Isolation(images));
        Assert.Equal(10u, isolation.Namespaces[7]["net"]);
        Assert.Contains(isolation.Mounts, m => m is { MountPoint: "/proc/kcore", External: true });
        Assert.Equal([new CriuDeviceNode("tmpfs-dev-99.tar.gz.img", "/dev/null", 'c', 1, 3)], isolation.DeviceNodes);
    }

    [Fact]
    public void A_task_in_a_namespace_of_its_own_is_named()
    {
        using var dir = new TempDir("crest-criu");
        var images = WriteIsolation(dir, 4242, []);

        var v = Assert.Single(Isolation(images));

        Assert.Equal("namespaces", v.Check);
        Assert.Equal("task 7 (sleep): net namespace is one of its own (id 4242) in the checkpoint, but the request allows the container's (id 10), the only one the new pod provides", v.ToString());
    }

    [Fact]
    public void A_user_namespace_in_the_checkpoint_is_refused()
    {
        using var dir = new TempDir("crest-criu");
        var images = WriteIsolation(dir, 10, []);
        File.WriteAllBytes(Path.Combine(images, "userns-3.img"), Image(0x55555555));

        var v = Assert.Single(Isolation(images));

        Assert.Contains("a user namespace of its own (userns-3.img)", v.ToString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("/mnt", "ext4", false, "the container's mounts")]
    [InlineData("/proc", "ext4", false, "only cgroup, cgroup2, devpts, mqueue, proc, sysfs, tmpfs mounted by CRIU itself")]
    [InlineData("/data", "bind", true, "the container's mounts")]
    [InlineData("/sys/kernel/debug", "debugfs", false, "the container's mounts")]
    public void A_mount_the_request_does_not_give_the_container_is_refused(string mountPoint, string kind, bool external, string allowed)
    {
        using var dir = new TempDir("crest-criu");
        var mount = kind switch
        {
            "ext4" => MountAt(mountPoint, fstype.Auto, fsname: "ext4"),
            "debugfs" => MountAt(mountPoint, fstype.Debugfs),
            _ => MountAt(mountPoint, fstype.Unsupported, external: true),
        };
        var images = WriteIsolation(dir, 10, [mount]);

        var v = Assert.Single(Isolation(images));

        Assert.Equal("mounts", v.Check);
        Assert.Contains($"the mount at {mountPoint} is ", v.ToString(), StringComparison.Ordinal);
        Assert.Contains("the request allows " + allowed, v.ToString(), StringComparison.Ordinal);
        Assert.True(external == v.Claimed.Contains("provided by the runtime", StringComparison.Ordinal));
    }

    [Fact]
    public void Masks_and_read_only_views_inside_proc_and_sys_pass_whichever_engine_made_them()
    {
        using var dir = new TempDir("crest-criu");
        var images = WriteIsolation(dir, 10, [MountAt("/proc/interrupts", fstype.Tmpfs, external: true, device: 99, root: "/null"), MountAt("/proc/sys", fstype.Proc),
            MountAt("/sys/firmware", fstype.Tmpfs), MountAt("/sys/devices/virtual/powercap", fstype.Tmpfs)]);

        Assert.Empty(Isolation(images));
    }

    [Fact]
    public void A_bind_mount_the_request_declares_passes_and_a_privileged_request_may_have_any_mount()
    {
        using var dir = new TempDir("crest-criu");
        var images = WriteIsolation(dir, 10, [MountAt("/data", fstype.Unsupported, external: true), MountAt("/mnt", fstype.Auto, fsname: "ext4")]);

        var declared = Isolation(images, new ContainerSpec { Name = "c", Image = "i", Mounts = [new MountSpec("/data/", "/srv/data", false)] });
        var privileged = Isolation(images, new ContainerSpec { Name = "c", Image = "i", Security = new SecuritySpec { Privileged = true } });

        Assert.Equal("the mount at /mnt", Assert.Single(declared).Field);
        Assert.Empty(privileged);
    }

    [Theory]
    [InlineData("block")]
    [InlineData("char")]
    public void A_device_node_the_request_does_not_map_is_refused(string kind)
    {
        using var dir = new TempDir("crest-criu");
        var images = WriteIsolation(dir, 10, [], t => t.WriteEntry(new System.Formats.Tar.PaxTarEntry(
            kind == "block" ? System.Formats.Tar.TarEntryType.BlockDevice : System.Formats.Tar.TarEntryType.CharacterDevice, "./disk") { DeviceMajor = 8, DeviceMinor = 0 }));

        var v = Assert.Single(Isolation(images));

        Assert.Equal("devices", v.Check);
        Assert.Contains($"device node /dev/disk in tmpfs-dev-99.tar.gz.img is {(kind == "block" ? "block" : "character")} device 8:0", v.ToString(), StringComparison.Ordinal);
        Assert.Empty(RestorePolicy.EvaluateIsolation(CriuImages.ReadIsolation(images, 1 << 20), new ContainerSpec { Name = "c", Image = "i" },
            [(kind[0], 8, 0)], new Dictionary<uint, string>()));
    }

    [Theory]
    [InlineData("through-link")]
    [InlineData("dotdot")]
    [InlineData("absolute")]
    [InlineData("link-over-mount")]
    [InlineData("hardlink-out")]
    [InlineData("bomb")]
    [InlineData("garbage")]
    public void Hostile_tmpfs_contents_are_refused_before_criu_unpacks_them(string attack)
    {
        using var dir = new TempDir("crest-criu");
        var images = WriteIsolation(dir, 10, [], t =>
        {
            switch (attack)
            {
                case "through-link":
                    t.WriteEntry(new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.SymbolicLink, "./etc") { LinkName = "/etc" });
                    t.WriteEntry(new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.RegularFile, "./etc/shadow") { DataStream = new MemoryStream([1]) });
                    break;
                case "dotdot":
                    t.WriteEntry(new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.RegularFile, "./../../etc/shadow") { DataStream = new MemoryStream([1]) });
                    break;
                case "absolute":
                    t.WriteEntry(new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.RegularFile, "/etc/shadow") { DataStream = new MemoryStream([1]) });
                    break;
                case "link-over-mount":
                    t.WriteEntry(new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.SymbolicLink, "./pts") { LinkName = "/" });
                    break;
                case "hardlink-out":
                    t.WriteEntry(new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.HardLink, "./passwd") { LinkName = "../etc/passwd" });
                    break;
                case "bomb":
                    t.WriteEntry(new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.RegularFile, "./zeros") { DataStream = new MemoryStream(new byte[2 << 20]) });
                    break;
            }
        });
        if (attack == "garbage")
        {
            File.WriteAllBytes(Path.Combine(images, "tmpfs-dev-99.tar.gz.img"), [0x1f, 0x8b, 8, 0, 1, 2, 3]);
        }

        var e = Assert.Throws<CrestException>(() => CriuImages.ReadIsolation(images, 1 << 20));

        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Contains(attack switch
        {
            "through-link" => "would be written through the link etc the same archive made",
            "dotdot" or "absolute" => "is absolute or climbs out",
            "link-over-mount" => "stands where the mount at /dev/pts goes",
            "hardlink-out" => "points out of the archive",
            "bomb" => "expand past 1048576 bytes",
            _ => "it is not a gzip tar",
        }, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_command_line_is_read_from_the_checkpointed_memory_through_the_pagemap()
    {
        using var dir = new TempDir("crest-criu");
        var images = dir.CreateDirectory("checkpoint");
        var argv = "/bin/sh\0-c\0echo hi\0"u8.ToArray();
        const ulong argStart = 0x7000 + 0x10;
        File.WriteAllBytes(Path.Combine(images, "mm-1.img"), Image(0x57492820, new mm_entry { MmArgStart = argStart, MmArgEnd = argStart + (ulong)argv.Length }));
        // Runs: 0x3000 (1 page, in the parent image: not in this file), 0x5000 (2 pages, in the file), 0x7000 (1 page).
        static byte[] Run(ulong vaddr, ulong pages, uint flags)
        {
            using var ms = new MemoryStream();
            var o = new CodedOutputStream(ms);
            o.WriteTag(1, WireFormat.WireType.Varint); o.WriteUInt64(vaddr);
            o.WriteTag(2, WireFormat.WireType.Varint); o.WriteUInt32(0);
            o.WriteTag(4, WireFormat.WireType.Varint); o.WriteUInt32(flags);
            o.WriteTag(5, WireFormat.WireType.Varint); o.WriteUInt64(pages);
            o.Flush();
            return ms.ToArray();
        }

        using (var pagemap = new MemoryStream())
        {
            pagemap.Write(Image(0x56084025, new pagemap_head { PagesId = 3 }));
            foreach (var run in new[] { Run(0x3000, 1, 1), Run(0x5000, 2, 6), Run(0x7000, 1, 4) })
            {
                pagemap.Write(BitConverter.GetBytes(run.Length));
                pagemap.Write(run);
            }

            File.WriteAllBytes(Path.Combine(images, "pagemap-1.img"), pagemap.ToArray());
        }

        var pages = new byte[3 * 4096];
        argv.CopyTo(pages, 2 * 4096 + 0x10);
        File.WriteAllBytes(Path.Combine(images, "pages-3.img"), pages);

        Assert.Equal(["/bin/sh", "-c", "echo hi"], CriuImages.ReadCommandLine(images, 1));

        File.WriteAllBytes(Path.Combine(images, "pages-3.img"), pages[..4096]);
        Assert.Throws<CrestException>(() => CriuImages.ReadCommandLine(images, 1));
        Assert.Null(CriuImages.ReadCommandLine(images, 2));
    }

    [Fact]
    public void Without_run_as_group_the_groups_must_be_the_ones_the_spec_resolved_from_the_image()
    {
        using var dir = new TempDir("crest-criu");
        var core = CoreFor(1000, 0, seccomp_mode.Disabled);
        (core.ThreadCore.Creds.Gid, core.ThreadCore.Creds.Egid, core.ThreadCore.Creds.Sgid, core.ThreadCore.Creds.Fsgid) = (1000, 1000, 1000, 1000);
        core.ThreadCore.Creds.Groups.Add(27);
        var threads = CriuImages.ReadThreads(WriteCheckpoint(dir, (1, core)));

        Assert.Empty(RestorePolicy.EvaluateResolvedGroups(threads, 1000, [27]));
        var wrongGid = RestorePolicy.EvaluateResolvedGroups(threads, 100, [27]);
        var extraGroup = Assert.Single(RestorePolicy.EvaluateResolvedGroups(threads, 1000, []));

        Assert.Equal("task 1 (sh): gid (real/effective/saved/fs) is 1000/1000/1000/1000 in the checkpoint, but the request allows gid 100, the run_as_user's group in the image", Assert.Single(wrongGid).ToString());
        Assert.Equal("supplementary groups", extraGroup.Field);
    }

    [Fact]
    public void Without_run_as_user_a_non_root_user_resolved_from_run_as_username_or_the_image_is_a_ceiling_and_root_is_none()
    {
        using var dir = new TempDir("crest-criu");
        var core = CoreFor(0, 0, seccomp_mode.Disabled);
        var rootThreads = CriuImages.ReadThreads(WriteCheckpoint(dir, (1, core)));

        // run_as_username "www" (uid 1000) must not bring back a process that runs as root.
        var violation = Assert.Single(RestorePolicy.EvaluateResolvedUser(rootThreads, 1000, 1000, []), v => v.Field.StartsWith("uid", StringComparison.Ordinal));
        Assert.Contains("uid 1000, the user run_as_username or the image's USER resolves to", violation.ToString(), StringComparison.Ordinal);
        // A root user (no USER, no run_as_*) may become anyone: nothing to check here.
        Assert.Empty(RestorePolicy.EvaluateResolvedUser(rootThreads, 0, 0, []));
    }
}
