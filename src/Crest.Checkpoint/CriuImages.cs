using System.Buffers.Binary;
using Crest.Core;
using Crest.Cri.Api.CriuImages;
using Google.Protobuf;

namespace Crest.Checkpoint;

/// <summary>One thread of a checkpointed process, as its CRIU core image describes it.</summary>
public sealed record CriuThread(
    uint Pid,
    uint Tid,
    string Command,
    uint[] Uids,
    uint[] Gids,
    IReadOnlyList<uint> Groups,
    ulong Effective,
    ulong Permitted,
    ulong Inheritable,
    ulong Bounding,
    uint Securebits,
    string Seccomp,
    string Architecture = "x86_64");

/// <summary>
/// Reads the CRIU images that decide a restored process's privileges: pstree.img (processes and threads) and
/// core-TID.img (per-thread credentials, capability sets, seccomp). The framing is parsed with bounds checks:
/// a 32-bit magic (preceded by CRIU's common or service magic), then entries of a 32-bit length and a protobuf
/// message. A malformed image is a <see cref="CrestException"/>, never a crash or an unbounded allocation.
/// </summary>
public static class CriuImages
{
    private const uint CommonMagic = 0x54564319;
    private const uint ServiceMagic = 0x55105940;
    private const uint PstreeMagic = 0x50273030;
    private const uint CoreMagic = 0x55053847;
    private const uint FsMagic = 0x51403912;
    private const uint FilesMagic = 0x56303138;
    private const int MaxImageBytes = 16 << 20;
    private const int MaxEntries = 65536;
    private const int MaxThreads = 65536;

    /// <summary>The entries of one image file, after checking its magic.</summary>
    public static IReadOnlyList<ReadOnlyMemory<byte>> Entries(ReadOnlyMemory<byte> file, uint expectedMagic, string what)
    {
        var span = file.Span;
        if (span.Length < 4)
        {
            throw Malformed(what, "it is shorter than a magic number");
        }

        var offset = 0;
        var magic = BinaryPrimitives.ReadUInt32LittleEndian(span);
        offset += 4;
        if (magic is CommonMagic or ServiceMagic)
        {
            if (span.Length < 8)
            {
                throw Malformed(what, "it ends after the first magic number");
            }

            magic = BinaryPrimitives.ReadUInt32LittleEndian(span[4..]);
            offset += 4;
        }

        if (magic != expectedMagic)
        {
            throw Malformed(what, $"magic {magic:x8} is not {expectedMagic:x8}");
        }

        var entries = new List<ReadOnlyMemory<byte>>();
        while (offset < span.Length)
        {
            if (span.Length - offset < 4)
            {
                throw Malformed(what, $"a truncated entry length at byte {offset}");
            }

            var size = BinaryPrimitives.ReadUInt32LittleEndian(span[offset..]);
            offset += 4;
            if (size > (uint)(span.Length - offset))
            {
                throw Malformed(what, $"an entry at byte {offset - 4} claims {size} bytes but {span.Length - offset} remain");
            }

            if (entries.Count >= MaxEntries)
            {
                throw Malformed(what, $"more than {MaxEntries} entries");
            }

            entries.Add(file.Slice(offset, (int)size));
            offset += (int)size;
        }

        return entries;
    }

    /// <summary>Every thread of every checkpointed process, from pstree.img and the core images it names.</summary>
    public static IReadOnlyList<CriuThread> ReadThreads(string imagesDir)
    {
        var pstree = Load(imagesDir, "pstree.img");
        var threads = new List<CriuThread>();
        foreach (var raw in Entries(pstree, PstreeMagic, "pstree.img"))
        {
            var process = Parse(pstree_entry.Parser, raw, "pstree.img");
            var tids = process.Threads.Count > 0 ? process.Threads.ToList() : [process.Pid];
            foreach (var tid in tids)
            {
                if (threads.Count >= MaxThreads)
                {
                    throw Malformed("pstree.img", $"more than {MaxThreads} threads");
                }

                var name = $"core-{tid}.img";
                var cores = Entries(Load(imagesDir, name), CoreMagic, name);
                if (cores.Count != 1)
                {
                    throw Malformed(name, $"{cores.Count} entries where one core entry belongs");
                }

                var core = Parse(core_entry.Parser, cores[0], name);
                var creds = core.ThreadCore?.Creds
                    ?? throw Malformed(name, "it records no credentials for the thread");
                var comm = core.ThreadCore.HasComm ? core.ThreadCore.Comm : core.Tc?.Comm ?? "";
                var seccomp = core.ThreadCore.HasSeccompMode ? core.ThreadCore.SeccompMode
                    : core.Tc is { HasOldSeccompMode: true } tc ? tc.OldSeccompMode : seccomp_mode.Disabled;
                threads.Add(new CriuThread(process.Pid, tid, comm,
                    [creds.Uid, creds.Euid, creds.Suid, creds.Fsuid],
                    [creds.Gid, creds.Egid, creds.Sgid, creds.Fsgid],
                    [.. creds.Groups],
                    Mask(creds.CapEff), Mask(creds.CapPrm), Mask(creds.CapInh), Mask(creds.CapBnd),
                    creds.Secbits,
                    seccomp.ToString().ToLowerInvariant(),
                    ArchitectureName(core.Mtype)));
            }
        }

        return threads;
    }

    /// <summary>
    /// The permission bits the checkpointed root process saw on its root directory (fs-PID.img names the root's file
    /// id, files.img records its mode). CRIU refuses to restore into a root whose mode differs (Podman's roots are
    /// 0555, Crest's 0755), so the restore gives the new rootfs these bits. Null when the images do not say.
    /// </summary>
    public static uint? RootDirectoryMode(string imagesDir)
    {
        if (!Linux.FileKinds.IsRegularFile(Path.Combine(imagesDir, "pstree.img")))
        {
            return null; // completeness (inventory.img, pstree.img) is checked where the restore starts and by CRIU
        }

        var pstree = Entries(Load(imagesDir, "pstree.img"), PstreeMagic, "pstree.img");
        if (pstree.Count == 0)
        {
            return null;
        }

        var root = Parse(pstree_entry.Parser, pstree[0], "pstree.img");
        var fsName = $"fs-{root.Pid}.img";
        if (!Linux.FileKinds.IsRegularFile(Path.Combine(imagesDir, fsName)) || !Linux.FileKinds.IsRegularFile(Path.Combine(imagesDir, "files.img")))
        {
            return null;
        }

        var fs = Entries(Load(imagesDir, fsName), FsMagic, fsName);
        if (fs.Count != 1)
        {
            throw Malformed(fsName, $"{fs.Count} entries where one fs entry belongs");
        }

        var rootId = Parse(fs_entry.Parser, fs[0], fsName).RootId;
        foreach (var raw in Entries(Load(imagesDir, "files.img"), FilesMagic, "files.img"))
        {
            // file_entry: id is field 2, a regular file's details (reg_file_entry) field 3; the other kinds are skipped.
            uint id = 0;
            ByteString? reg = null;
            try
            {
                var input = new CodedInputStream(raw.ToArray());
                uint tag;
                while ((tag = input.ReadTag()) != 0)
                {
                    switch (tag)
                    {
                        case 16:
                            id = input.ReadUInt32();
                            break;
                        case 26:
                            reg = input.ReadBytes();
                            break;
                        default:
                            input.SkipLastField();
                            break;
                    }
                }
            }
            catch (InvalidProtocolBufferException e)
            {
                throw Malformed("files.img", e.Message);
            }

            if (id == rootId && reg is not null)
            {
                var file = Parse(reg_file_entry.Parser, reg.Memory, "files.img");
                return file.HasMode ? file.Mode & 0xFFF : null;
            }
        }

        return null;
    }

    /// <summary>The machine a core image was dumped on, in the names uname uses.</summary>
    public static string ArchitectureName(core_entry.Types.march machine) => machine switch
    {
        core_entry.Types.march.X8664 => "x86_64",
        core_entry.Types.march.Aarch64 => "aarch64",
        core_entry.Types.march.Arm => "arm",
        core_entry.Types.march.Ppc64 => "ppc64le",
        core_entry.Types.march.S390 => "s390x",
        core_entry.Types.march.Mips => "mips64",
        _ => "unknown",
    };

    /// <summary>This node's architecture in the same names.</summary>
    public static string HostArchitecture => System.Runtime.InteropServices.RuntimeInformation.OSArchitecture switch
    {
        System.Runtime.InteropServices.Architecture.X64 => "x86_64",
        System.Runtime.InteropServices.Architecture.Arm64 => "aarch64",
        System.Runtime.InteropServices.Architecture.Arm => "arm",
        System.Runtime.InteropServices.Architecture.Ppc64le => "ppc64le",
        System.Runtime.InteropServices.Architecture.S390x => "s390x",
        var other => other.ToString().ToLowerInvariant(),
    };

    private static ulong Mask(Google.Protobuf.Collections.RepeatedField<uint> words) =>
        words.Count switch
        {
            0 => 0,
            1 => words[0],
            _ => words[0] | ((ulong)words[1] << 32),
        };

    private static ReadOnlyMemory<byte> Load(string dir, string name)
    {
        var path = Path.Combine(dir, name);
        if (!Linux.FileKinds.IsRegularFile(path))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"the checkpoint's CRIU image {name} is missing or not a regular file; the checkpoint is incomplete");
        }

        if (new FileInfo(path).Length > MaxImageBytes)
        {
            throw Malformed(name, $"it is larger than {MaxImageBytes} bytes");
        }

        using var stream = new FileStream(Linux.FileKinds.OpenReadNoFollow(path), FileAccess.Read);
        var buffer = new byte[stream.Length];
        stream.ReadExactly(buffer);
        return buffer;
    }

    private static T Parse<T>(MessageParser<T> parser, ReadOnlyMemory<byte> raw, string what)
        where T : IMessage<T>
    {
        try
        {
            return parser.ParseFrom(raw.Span);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw Malformed(what, e.Message);
        }
    }

    private static CrestException Malformed(string what, string why) =>
        new(ErrorKind.InvalidArgument, $"the checkpoint's CRIU image {what} is malformed: {why}");
}
