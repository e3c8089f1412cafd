using System.Buffers.Binary;
using Crest.Core;
using Crest.Criu.Api.Images;
using Google.Protobuf;

namespace Crest.Checkpoint.Format;

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

/// <summary>One mount of a checkpointed mount namespace (mountpoints-ID.img): where, what, and whether the runtime provides it.</summary>
public sealed record CriuMount(string MountPoint, string FsType, string Source, string Root, bool External, uint Device = 0);

/// <summary>A device node that CRIU would create from a tmpfs content image (the container's /dev, say).</summary>
public sealed record CriuDeviceNode(string Image, string Path, char Kind, int Major, int Minor);

/// <summary>What a checkpoint says about isolation: each task's namespaces, user namespaces, mounts, and device nodes in tmpfs contents.</summary>
public sealed record CriuIsolation(
    IReadOnlyDictionary<uint, IReadOnlyDictionary<string, uint>> Namespaces,
    IReadOnlyList<string> UserNamespaceImages,
    IReadOnlyList<CriuMount> Mounts,
    IReadOnlyList<CriuDeviceNode> DeviceNodes,
    long TmpfsBytes);

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
    private const uint IdsMagic = 0x54432030;
    private const uint MountsMagic = 0x55563928;
    private const uint MmMagic = 0x57492820;
    private const uint PagemapMagic = 0x56084025;
    private const int PageSize = 4096;
    private const uint PagemapParent = 1;
    private const uint PagemapPresent = 4;
    private const int MaxMountNamespaces = 64;
    private const int MaxTmpfsImages = 256;
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

    /// <summary>
    /// Each task's namespaces (ids-PID.img, or the core image's ids), any user namespace the checkpoint holds
    /// (userns-ID.img), every mount of every mount namespace (mountpoints-ID.img), and the device nodes and bytes the
    /// tmpfs content images (tmpfs-*.tar.gz.img, unpacked by CRIU with tar) would create. The tmpfs contents are
    /// walked here first: names must be relative with no "..", nothing may be written through a link the archive
    /// itself made, and all of them together may not expand past <paramref name="maxTmpfsBytes"/>.
    /// </summary>
    public static CriuIsolation ReadIsolation(string imagesDir, long maxTmpfsBytes)
    {
        var pstree = Entries(Load(imagesDir, "pstree.img"), PstreeMagic, "pstree.img");
        var namespaces = new Dictionary<uint, IReadOnlyDictionary<string, uint>>();
        foreach (var raw in pstree)
        {
            var pid = Parse(pstree_entry.Parser, raw, "pstree.img").Pid;
            task_kobj_ids_entry? ids;
            var idsName = $"ids-{pid}.img";
            if (Linux.FileKinds.IsRegularFile(Path.Combine(imagesDir, idsName)))
            {
                var entries = Entries(Load(imagesDir, idsName), IdsMagic, idsName);
                ids = entries.Count == 1 ? Parse(task_kobj_ids_entry.Parser, entries[0], idsName) : throw Malformed(idsName, $"{entries.Count} entries where one belongs");
            }
            else
            {
                var coreName = $"core-{pid}.img";
                var cores = Entries(Load(imagesDir, coreName), CoreMagic, coreName);
                ids = cores.Count == 1 ? Parse(core_entry.Parser, cores[0], coreName).Ids : null;
            }

            if (ids is null)
            {
                throw Malformed($"ids-{pid}.img", "the task's namespaces are recorded neither there nor in its core image");
            }

            var kinds = new Dictionary<string, uint>(StringComparer.Ordinal);
            void Add(string kind, bool has, uint id)
            {
                if (has)
                {
                    kinds[kind] = id;
                }
            }

            Add("pid", ids.HasPidNsId, ids.PidNsId);
            Add("net", ids.HasNetNsId, ids.NetNsId);
            Add("ipc", ids.HasIpcNsId, ids.IpcNsId);
            Add("uts", ids.HasUtsNsId, ids.UtsNsId);
            Add("mnt", ids.HasMntNsId, ids.MntNsId);
            Add("user", ids.HasUserNsId, ids.UserNsId);
            Add("cgroup", ids.HasCgroupNsId, ids.CgroupNsId);
            Add("time", ids.HasTimeNsId, ids.TimeNsId);
            namespaces[pid] = kinds;
        }

        var userNamespaces = Directory.EnumerateFiles(imagesDir, "userns-*.img").Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToList();
        var mounts = new List<CriuMount>();
        var mountImages = Directory.EnumerateFiles(imagesDir, "mountpoints-*.img").Order(StringComparer.Ordinal).ToList();
        if (mountImages.Count > MaxMountNamespaces)
        {
            throw Malformed("mountpoints-*.img", $"more than {MaxMountNamespaces} mount namespaces");
        }

        foreach (var image in mountImages)
        {
            var name = Path.GetFileName(image);
            foreach (var raw in Entries(Load(imagesDir, name), MountsMagic, name))
            {
                var m = Parse(mnt_entry.Parser, raw, name);
                var type = Enum.IsDefined(typeof(fstype), (int)m.Fstype) ? ((fstype)m.Fstype).ToString().ToLowerInvariant() : $"fstype {m.Fstype}";
                if (type is "auto" or "unsupported")
                {
                    type = m.HasFsname && m.Fsname.Length > 0 ? m.Fsname : type;
                }

                mounts.Add(new CriuMount("/" + m.Mountpoint.TrimStart('.').Trim('/'), type, m.Source, m.Root, m.ExtMount || m.ExtKey.Length > 0, m.RootDev));
            }
        }

        var (devices, bytes) = ScanTmpfsContents(imagesDir, mounts, maxTmpfsBytes);
        return new CriuIsolation(namespaces, userNamespaces, mounts, devices, bytes);
    }

    private static (List<CriuDeviceNode> Devices, long Bytes) ScanTmpfsContents(string imagesDir, IReadOnlyList<CriuMount> mounts, long maxBytes)
    {
        var devices = new List<CriuDeviceNode>();
        long bytes = 0;
        var images = Directory.EnumerateFiles(imagesDir, "tmpfs-*.tar.gz.img").Order(StringComparer.Ordinal).ToList();
        if (images.Count > MaxTmpfsImages)
        {
            throw Malformed("tmpfs-*.tar.gz.img", $"more than {MaxTmpfsImages} tmpfs content images");
        }

        foreach (var image in images)
        {
            var name = Path.GetFileName(image);
            var links = new HashSet<string>(StringComparer.Ordinal);
            // CRIU names a tmpfs's contents after its device (tmpfs-dev-N.tar.gz.img); those mounts are where it unpacks.
            var device = name.StartsWith("tmpfs-dev-", StringComparison.Ordinal) && uint.TryParse(name["tmpfs-dev-".Length..^".tar.gz.img".Length], System.Globalization.CultureInfo.InvariantCulture, out var d) ? d : (uint?)null;
            var bases = mounts.Where(m => m.Device == device && m.Root == "/").Select(m => m.MountPoint).ToList();
            try
            {
                using var file = new FileStream(Linux.FileKinds.OpenReadNoFollow(image), FileAccess.Read, 1 << 16);
                using var gzip = new System.IO.Compression.GZipStream(file, System.IO.Compression.CompressionMode.Decompress);
                using var tar = new System.Formats.Tar.TarReader(gzip);
                while (tar.GetNextEntry(copyData: false) is { } entry)
                {
                    var path = entry.Name.StartsWith("./", StringComparison.Ordinal) ? entry.Name[2..] : entry.Name;
                    path = path.TrimEnd('/');
                    var parts = path.Split('/');
                    if (path.StartsWith('/') || parts.Contains(".."))
                    {
                        throw Malformed(name, $"entry \"{entry.Name}\" is absolute or climbs out with \"..\"");
                    }

                    for (var i = 1; i < parts.Length; i++)
                    {
                        if (links.Contains(string.Join('/', parts[..i])))
                        {
                            throw Malformed(name, $"entry \"{entry.Name}\" would be written through the link {string.Join('/', parts[..i])} the same archive made");
                        }
                    }

                    bytes += entry.Length;
                    if (bytes > maxBytes)
                    {
                        throw new CrestException(ErrorKind.InvalidArgument,
                            $"the checkpoint's tmpfs contents expand past {maxBytes} bytes (at {name}), the configured limit ([restore] max_rootfs_diff_bytes); nothing was written");
                    }

                    switch (entry.EntryType)
                    {
                        case System.Formats.Tar.TarEntryType.SymbolicLink:
                        case System.Formats.Tar.TarEntryType.HardLink:
                            links.Add(path);
                            foreach (var at in bases.Select(b => b.TrimEnd('/') + "/" + path))
                            {
                                if (mounts.FirstOrDefault(m => m.MountPoint == at || m.MountPoint.StartsWith(at + "/", StringComparison.Ordinal)) is { } under)
                                {
                                    throw Malformed(name, $"the link \"{entry.Name}\" stands where the mount at {under.MountPoint} goes");
                                }
                            }

                            if (entry.EntryType == System.Formats.Tar.TarEntryType.HardLink && (entry.LinkName.StartsWith('/') || entry.LinkName.Split('/').Contains("..")))
                            {
                                throw Malformed(name, $"hard link \"{entry.Name}\" points out of the archive ({entry.LinkName})");
                            }

                            break;
                        case System.Formats.Tar.TarEntryType.CharacterDevice:
                        case System.Formats.Tar.TarEntryType.BlockDevice:
                            var posix = (System.Formats.Tar.PosixTarEntry)entry;
                            devices.Add(new CriuDeviceNode(name, (bases.FirstOrDefault() ?? "").TrimEnd('/') + "/" + path, entry.EntryType == System.Formats.Tar.TarEntryType.CharacterDevice ? 'c' : 'b', posix.DeviceMajor, posix.DeviceMinor));
                            break;
                    }
                }
            }
            catch (Exception e) when (e is InvalidDataException or FormatException or EndOfStreamException or InvalidCastException)
            {
                throw Malformed(name, $"it is not a gzip tar: {e.Message}");
            }
        }

        return (devices, bytes);
    }

    /// <summary>CRIU's mark of a VMA that maps a System V shared memory segment (criu/include/image.h, VMA_AREA_SYSVIPC).</summary>
    private const uint VmaAreaSysVIpc = 1u << 10;

    /// <summary>
    /// The System V shared memory segments the checkpointed processes had attached, by id: every VMA marked
    /// VMA_AREA_SYSVIPC in the mm-PID.img files given (name and bytes, each bounds-checked as any image).
    /// </summary>
    public static IReadOnlySet<ulong> SysVAttachments(IEnumerable<(string Name, ReadOnlyMemory<byte> Bytes)> mmImages)
    {
        ArgumentNullException.ThrowIfNull(mmImages);
        var ids = new HashSet<ulong>();
        foreach (var (name, bytes) in mmImages)
        {
            foreach (var raw in Entries(bytes, MmMagic, name))
            {
                foreach (var vma in Parse(mm_entry.Parser, raw, name).Vmas)
                {
                    if ((vma.Status & VmaAreaSysVIpc) != 0)
                    {
                        ids.Add(vma.Shmid);
                    }
                }
            }
        }

        return ids;
    }

    /// <summary>
    /// A process's command line as the kernel would show it in /proc/PID/cmdline: the bytes between mm-PID.img's
    /// arg_start and arg_end, found through pagemap-PID.img in the pages image. Null when the pages are not in this
    /// checkpoint (an incremental dump) or the images do not say; at most <paramref name="maxBytes"/> are read.
    /// </summary>
    public static IReadOnlyList<string>? ReadCommandLine(string imagesDir, uint pid, int maxBytes = 16384)
    {
        var mmName = $"mm-{pid}.img";
        var pagemapName = $"pagemap-{pid}.img";
        if (!Linux.FileKinds.IsRegularFile(Path.Combine(imagesDir, mmName)) || !Linux.FileKinds.IsRegularFile(Path.Combine(imagesDir, pagemapName)))
        {
            return null;
        }

        var mms = Entries(Load(imagesDir, mmName), MmMagic, mmName);
        if (mms.Count != 1)
        {
            throw Malformed(mmName, $"{mms.Count} entries where one mm entry belongs");
        }

        var mm = Parse(mm_entry.Parser, mms[0], mmName);
        if (mm.MmArgEnd <= mm.MmArgStart)
        {
            return null;
        }

        var start = mm.MmArgStart;
        var length = (int)Math.Min((ulong)maxBytes, mm.MmArgEnd - mm.MmArgStart);
        var pagemap = Entries(Load(imagesDir, pagemapName), PagemapMagic, pagemapName);
        if (pagemap.Count == 0)
        {
            return null;
        }

        var pagesName = $"pages-{Parse(pagemap_head.Parser, pagemap[0], pagemapName).PagesId}.img";
        var pagesPath = Path.Combine(imagesDir, pagesName);
        if (!Linux.FileKinds.IsRegularFile(pagesPath))
        {
            return null;
        }

        // Where each present run of pages sits in the pages image: runs are stored in pagemap order.
        var runs = new List<(ulong Address, ulong Bytes, long Offset)>();
        long offset = 0;
        foreach (var raw in pagemap.Skip(1))
        {
            var entry = ParsePagemapEntry(raw, pagemapName);
            var inFile = entry.Flags is { } flags ? (flags & PagemapPresent) != 0 && (flags & PagemapParent) == 0 : !entry.InParent;
            var bytes = checked(entry.Pages * PageSize);
            if (inFile)
            {
                runs.Add((entry.Vaddr, bytes, offset));
                offset = checked(offset + (long)bytes);
            }
        }

        var buffer = new byte[length];
        using var pages = new FileStream(Linux.FileKinds.OpenReadNoFollow(pagesPath), FileAccess.Read);
        var done = 0;
        while (done < length)
        {
            var address = start + (ulong)done;
            var run = runs.FirstOrDefault(r => address >= r.Address && address - r.Address < r.Bytes);
            if (run.Bytes == 0)
            {
                return null;
            }

            var take = (int)Math.Min((ulong)(length - done), run.Bytes - (address - run.Address));
            var position = run.Offset + (long)(address - run.Address);
            if (position + take > pages.Length)
            {
                throw Malformed(pagesName, $"it ends before the pages {pagemapName} places at byte {position}");
            }

            pages.Position = position;
            pages.ReadExactly(buffer, done, take);
            done += take;
        }

        return System.Text.Encoding.UTF8.GetString(buffer).TrimEnd('\0').Split('\0');
    }

    /// <summary>
    /// pagemap_entry as CRIU 3.16 and later write it: the page count moved from field 2 (now compat_nr_pages, 32-bit)
    /// to field 5 (nr_pages, 64-bit); go-criu's proto still has only field 2, so the entry is read by hand.
    /// </summary>
    private static (ulong Vaddr, ulong Pages, uint? Flags, bool InParent) ParsePagemapEntry(ReadOnlyMemory<byte> raw, string what)
    {
        ulong vaddr = 0, compat = 0, pages = 0;
        uint? flags = null;
        var inParent = false;
        var hasPages = false;
        try
        {
            var input = new CodedInputStream(raw.ToArray());
            uint tag;
            while ((tag = input.ReadTag()) != 0)
            {
                switch (tag)
                {
                    case 8: vaddr = input.ReadUInt64(); break;
                    case 16: compat = input.ReadUInt32(); break;
                    case 24: inParent = input.ReadBool(); break;
                    case 32: flags = input.ReadUInt32(); break;
                    case 40: pages = input.ReadUInt64(); hasPages = true; break;
                    default: input.SkipLastField(); break;
                }
            }
        }
        catch (InvalidProtocolBufferException e)
        {
            throw Malformed(what, e.Message);
        }

        pages = hasPages ? pages : compat;
        return pages > (1UL << 40) ? throw Malformed(what, $"a run of {pages} pages") : (vaddr, pages, flags, inParent);
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
