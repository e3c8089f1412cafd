using System.Buffers.Binary;
using Crest.Checkpoint;
using Crest.Core;
using Crest.Cri.Api.CriuImages;
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
}
