using System.Formats.Tar;
using System.Text.Json;
using System.Text.Json.Nodes;
using Crest.Core;
using Crest.Linux;

namespace Crest.Checkpoint.Format;

/// <summary>Caps on what a checkpoint may expand to ([restore] in config.toml).</summary>
public sealed record RestoreLimits
{
    /// <summary>All bytes the outer archive may unpack to.</summary>
    public long MaxArchiveBytes { get; init; } = 64L << 30;
    public long MaxArchiveEntries { get; init; } = 100_000;
    /// <summary>All bytes the rootfs diff may unpack to in the container's rootfs.</summary>
    public long MaxRootfsDiffBytes { get; init; } = 16L << 30;
    public long MaxRootfsDiffEntries { get; init; } = 1_000_000;
    /// <summary>config.dump, spec.dump, status.dump, bind.mounts, deleted.files.</summary>
    public int MaxMetadataBytes { get; init; } = 4 << 20;
    public int MaxPathLength { get; init; } = 4096;

    /// <summary>
    /// Bytes the rootfs diff or a compressed archive may expand to per compressed byte, once it passes
    /// <see cref="RatioCheckFloorBytes"/>; 0 turns the check off. gzip reaches about 1000:1 on zeros, so a bomb is
    /// refused long before it fills a disk.
    /// </summary>
    public double MaxExpansionRatio { get; init; } = 100;

    /// <summary>Expansion up to this many bytes is not checked for its ratio: small, very compressible diffs are normal.</summary>
    public long RatioCheckFloorBytes { get; init; } = 64L << 20;

    /// <summary>
    /// The directory whose filesystem a restore writes the rootfs diff to; null: free space is not checked at all. When
    /// set, archives and image layers are also checked against the free space of the staging directory they unpack to.
    /// </summary>
    public string? TargetFilesystem { get; init; }

    /// <summary>Bytes that must stay free on <see cref="TargetFilesystem"/> (and the staging filesystem) after a restore writes.</summary>
    public long DiskReserveBytes { get; init; } = 1L << 30;

    /// <summary>Free bytes of the filesystem holding a path; tests inject a small disk here.</summary>
    public Func<string, long> FreeBytesOf { get; init; } = DiskBudget.FreeBytesOf;

    /// <summary>What the filesystem of <paramref name="dir"/> can take now, or null when free space is not checked.</summary>
    /// <summary>Where concurrent restores, pulls and loads count what they write; tests that fake free space use one of their own.</summary>
    public DiskLedger Disks { get; init; } = DiskLedger.Shared;

    /// <summary>Opens a budget on the filesystem of <paramref name="dir"/>, or null when free space is not checked; the caller closes it.</summary>
    public DiskBudget? BudgetOf(string dir) =>
        TargetFilesystem is null ? null : Disks.Open(dir, DiskReserveBytes, "[restore] disk_reserve_bytes", FreeBytesOf);
}

/// <summary>
/// Turns a checkpoint of any engine into one <see cref="RestorePlan"/>. Every byte is untrusted: the archive reaches
/// the disk only through <see cref="SafeExtractor"/> (regular files and directories only, caps on entries and bytes)
/// into a fresh 0700 directory, metadata files are size-capped before they are parsed, and nothing here writes
/// outside that directory. A failure names the file and what was wrong; the caller owns the directory and removes it.
/// </summary>
public sealed class CheckpointReader(RestoreLimits limits)
{
    /// <summary>
    /// The mount destinations Crest's own spec provides again at restore, so the request need not declare them. CRI-O's
    /// list also skips /etc/passwd, /etc/group, /run/secrets, /run/.containerenv and /dev/termination-log, which CRI-O
    /// (and Podman) add by themselves; Crest does not, and CRIU cannot restore a bind mount that is not there again
    /// ("No mapping for N:(null) mountpoint" at StartContainer), so a checkpoint with them needs them in the request.
    /// </summary>
    private static readonly HashSet<string> SystemMounts = new(StringComparer.Ordinal)
    {
        "/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/dev/shm", "/etc/resolv.conf",
        "/etc/hostname", "/etc/hosts",
    };

    /// <summary>
    /// Unpacks an archive (plain, gzip or zstd) into <paramref name="stagingDir"/> (which must be new and empty) and reads
    /// it. With <paramref name="pagesInPlace"/>, a plain archive's CRIU page images (at least
    /// <see cref="IArchivePagesInPlace.MinimumBytes"/> in all) are not written: they are served where the archive holds
    /// them, or written after all when that fails.
    /// </summary>
    public async Task<RestorePlan> ReadArchiveAsync(string archivePath, string stagingDir, CancellationToken ct, IArchivePagesInPlace? pagesInPlace = null)
    {
        if (!FileKinds.IsRegularFile(archivePath))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint archive {archivePath} is not a regular file");
        }

        var what = $"checkpoint archive {archivePath}";
        long served = 0;
        await using (var file = new FileStream(FileKinds.OpenReadNoFollow(archivePath), FileAccess.Read, 1 << 20))
        {
            var pages = pagesInPlace is null || !await pagesInPlace.AvailableAsync(ct).ConfigureAwait(false)
                ? null
                : await PageImagesOfPlainTarAsync(file, pagesInPlace.MinimumBytes, ct).ConfigureAwait(false);
            if (pages is null)
            {
                await UnpackAsync(file, stagingDir, what, ct).ConfigureAwait(false);
            }
            else
            {
                var left = await UnpackPlainAsync(file, stagingDir, what, pages, ct).ConfigureAwait(false);
                if (left.Count > 0 && await pagesInPlace!.TryServeAsync(file.SafeFileHandle, stagingDir, left, ct).ConfigureAwait(false))
                {
                    served = left.Sum(f => f.Length);
                }
                else if (left.Count > 0)
                {
                    // Not served (the node cannot mount them, say): the whole archive is unpacked again, as without the offer.
                    EmptyDirectory(stagingDir);
                    file.Seek(0, SeekOrigin.Begin);
                    await UnpackAsync(file, stagingDir, what, ct).ConfigureAwait(false);
                }
            }
        }

        var plan = Read(stagingDir, archivePath, CheckpointSourceKind.Archive);
        return served == 0 ? plan : plan with { CriuImageBytes = plan.CriuImageBytes + served, PagesServedInPlaceBytes = served };
    }

    /// <summary>
    /// The CRIU page images (<c>checkpoint/pages-N.img</c>) of <paramref name="file"/> when it is a plain tar whose page
    /// images hold at least <paramref name="minimumBytes"/>; null otherwise. Only headers are read (the data is
    /// seeked over); the stream is left at its start. An archive with a global header, or with anything but zeros after
    /// its end, is not offered: mkfs.erofs reads tar on its own, and those are the plainest ways to show it entries the
    /// extractor never saw. This only narrows the gap (the two parsers differ in other corners too); what keeps the
    /// served bytes the archive's own is the server's check of the mounted index (<see cref="IArchivePagesInPlace"/>).
    /// </summary>
    private static async Task<IReadOnlySet<string>?> PageImagesOfPlainTarAsync(FileStream file, long minimumBytes, CancellationToken ct)
    {
        var head = new byte[4];
        var n = await file.ReadAtLeastAsync(head, head.Length, throwOnEndOfStream: false, ct).ConfigureAwait(false);
        file.Seek(0, SeekOrigin.Begin);
        if (Crest.Images.LayerStreams.Detect(head.AsSpan(0, n)) != Crest.Images.Compression.None)
        {
            return null;
        }

        var pages = new HashSet<string>(StringComparer.Ordinal);
        long bytes = 0;
        try
        {
            using var tar = new TarReader(file, leaveOpen: true);
            while (await tar.GetNextEntryAsync(copyData: false, ct).ConfigureAwait(false) is { } entry)
            {
                if (entry.EntryType == TarEntryType.GlobalExtendedAttributes)
                {
                    pages.Clear();
                    break;
                }

                if (entry.EntryType is TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile
                    && CheckpointFiles.IsPageImage(SafeExtractor.NormalizeName(entry.Name)))
                {
                    pages.Add(SafeExtractor.NormalizeName(entry.Name));
                    bytes += entry.Length;
                }
            }

            if (pages.Count > 0 && !await OnlyZerosLeftAsync(file, ct).ConfigureAwait(false))
            {
                pages.Clear();
            }
        }
        catch (Exception e) when (e is not (OperationCanceledException or OutOfMemoryException))
        {
            // Malformed: the unpacking that follows says where, as it would without the offer.
            pages.Clear();
        }

        file.Seek(0, SeekOrigin.Begin);
        return pages.Count > 0 && bytes >= minimumBytes ? pages : null;
    }

    /// <summary>Whether what follows the tar's end marker is zeros only, and little of it (a tar writer's record padding).</summary>
    private static async Task<bool> OnlyZerosLeftAsync(FileStream file, CancellationToken ct)
    {
        const int MaxPadding = 1 << 20;
        var left = file.Length - file.Position;
        if (left > MaxPadding)
        {
            return false;
        }

        var rest = new byte[left];
        await file.ReadExactlyAsync(rest, ct).ConfigureAwait(false);
        return !rest.AsSpan().ContainsAnyExcept((byte)0);
    }

    /// <summary>Unpacks a plain tar, leaving <paramref name="pages"/> in it; returns what it left.</summary>
    private async Task<IReadOnlyList<ArchivedFile>> UnpackPlainAsync(FileStream file, string dir, string what, IReadOnlySet<string> pages, CancellationToken ct)
    {
        using var disk = limits.BudgetOf(dir);
        using var extractor = new SafeExtractor(dir, UntrustedFiles(disk) with { LeaveInArchive = pages });
        var result = await extractor.ExtractAsync(file, what, ct).ConfigureAwait(false);
        return result.LeftInArchive;
    }

    private static void EmptyDirectory(string dir)
    {
        foreach (var entry in Directory.EnumerateFileSystemEntries(dir))
        {
            if (FileKinds.IsDirectory(entry))
            {
                Directory.Delete(entry, recursive: true);
            }
            else
            {
                File.Delete(entry);
            }
        }
    }

    /// <summary>
    /// Unpacks one tar (plain, gzip or zstd) of untrusted checkpoint files into <paramref name="dir"/>: regular files
    /// and directories only, within the archive caps. <paramref name="what"/> names the source in errors.
    /// </summary>
    public async Task UnpackAsync(Stream file, string dir, string what, CancellationToken ct)
    {
        // The compressed bytes the decompressor consumed, against the bytes written: a bomb stops while it expands.
        var counted = new CountingReadStream(file, leaveOpen: true);
        await using var tar = CheckpointArchive.OpenRead(counted);
        using var disk = limits.BudgetOf(dir);
        using var extractor = new SafeExtractor(dir, UntrustedFiles(disk));
        try
        {
            await extractor.ExtractAsync(tar, what, () => counted.BytesRead, ct).ConfigureAwait(false);
        }
        catch (InvalidDataException e)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"{what} cannot be decompressed: {e.Message}", e);
        }
    }

    /// <summary>Regular files and directories only, within the archive caps and <paramref name="disk"/>.</summary>
    private ExtractionPolicy UntrustedFiles(DiskBudget? disk) => ExtractionPolicy.FilesOnly with
    {
        MaxBytes = limits.MaxArchiveBytes,
        MaxBytesSetting = "[restore] max_archive_bytes",
        MaxEntries = limits.MaxArchiveEntries,
        MaxPathLength = limits.MaxPathLength,
        MaxExpansionRatio = limits.MaxExpansionRatio,
        RatioCheckFloorBytes = limits.RatioCheckFloorBytes,
        RatioSetting = "[restore] max_expansion_ratio",
        Disk = disk,
    };

    /// <summary>
    /// Stages a checkpoint image's unpacked layers (lowest first, so upper layers win) in <paramref name="stagingDir"/>:
    /// regular files and directories only, each opened with O_NOFOLLOW; a link or device in the image is an error. Files
    /// are hard-linked where the layer and the staging directory share a filesystem, and copied otherwise.
    /// </summary>
    public RestorePlan ReadImageLayers(IReadOnlyList<string> layerDirsTopFirst, string image, string stagingDir, CancellationToken ct)
    {
        CopyImageLayers(layerDirsTopFirst, image, stagingDir, ct);
        return Read(stagingDir, image, CheckpointSourceKind.Image);
    }

    /// <summary>
    /// The copy half of <see cref="ReadImageLayers"/>, for images whose files are not one container checkpoint (a pod
    /// checkpoint image holds a pod checkpoint directory).
    /// </summary>
    public void CopyImageLayers(IReadOnlyList<string> layerDirsTopFirst, string image, string stagingDir, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(layerDirsTopFirst);
        long bytes = 0;
        long entries = 0;
        using var disk = limits.BudgetOf(stagingDir);
        foreach (var layer in layerDirsTopFirst.Reverse())
        {
            var pending = new Stack<string>();
            pending.Push("");
            while (pending.Count > 0)
            {
                ct.ThrowIfCancellationRequested();
                var relative = pending.Pop();
                foreach (var full in Directory.EnumerateFileSystemEntries(relative.Length == 0 ? layer : Path.Combine(layer, relative)))
                {
                    var name = relative.Length == 0 ? Path.GetFileName(full) : relative + "/" + Path.GetFileName(full);
                    if (++entries > limits.MaxArchiveEntries || name.Length > limits.MaxPathLength)
                    {
                        throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint image {image} has more than {limits.MaxArchiveEntries} entries or a path longer than {limits.MaxPathLength}, the configured limits");
                    }

                    var destination = Path.Combine(stagingDir, name);
                    if (FileKinds.IsDirectory(full))
                    {
                        // An opaque directory hides everything the lower layers put there.
                        if (FileKinds.IsOverlayOpaque(full) && FileKinds.IsDirectory(destination))
                        {
                            Directory.Delete(destination, recursive: true);
                        }

                        Directory.CreateDirectory(destination, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
                        pending.Push(name);
                    }
                    else if (FileKinds.IsRegularFile(full))
                    {
                        var size = new FileInfo(full).Length;
                        bytes += size;
                        if (bytes > limits.MaxArchiveBytes)
                        {
                            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint image {image} holds more than {limits.MaxArchiveBytes} bytes, the configured limit ([restore] max_archive_bytes)");
                        }

                        try
                        {
                            // A file from a lower layer is replaced by the upper layer's (a directory in its way is an error).
                            if (FileKinds.IsRegularFile(destination))
                            {
                                File.Delete(destination);
                            }

                            using var input = new FileStream(FileKinds.OpenReadNoFollow(full), FileAccess.Read);
                            // The layer's files are Crest's (unpacked at pull) and nothing writes to staged checkpoint
                            // files, so a hard link stages them with no copy: CRIU reads its pages where the pull put
                            // them, and the staged name outlives an image removed meanwhile.
                            if (FileKinds.TryLinkOpenFile(input.SafeFileHandle, destination))
                            {
                                continue;
                            }

                            // Refused before the copy that would eat into the reserve; the caller removes the staging directory.
                            if (disk is not null && !disk.TryTake(size))
                            {
                                throw new CrestException(ErrorKind.ResourceExhausted,
                                    $"checkpoint image {image} was refused at /{name} ({size} bytes): staging it takes at least {bytes} bytes, more than {disk.Describe()}; "
                                    + "free space on the node or lower the reserve");
                            }

                            using var output = new FileStream(destination, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite });
                            input.CopyTo(output);
                            // The layer's modification time goes with the copy, as the archive's would (see CheckpointTime).
                            output.Flush();
                            File.SetLastWriteTimeUtc(output.SafeFileHandle, File.GetLastWriteTimeUtc(input.SafeFileHandle));
                        }
                        catch (IOException e)
                        {
                            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint image {image}: /{name} cannot be copied: {e.Message}", e);
                        }
                    }
                    else if (FileKinds.IsOverlayWhiteout(full))
                    {
                        // A whiteout removes what the lower layers staged under this name (staging holds only
                        // regular files and directories Crest made, so nothing is followed).
                        if (FileKinds.IsDirectory(destination))
                        {
                            Directory.Delete(destination, recursive: true);
                        }
                        else if (FileKinds.IsRegularFile(destination))
                        {
                            File.Delete(destination);
                        }
                    }
                    else
                    {
                        throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint image {image}: /{name} is a link, device or FIFO; a checkpoint holds only regular files and directories");
                    }
                }
            }
        }
    }

    /// <summary>Reads and normalises the metadata of an unpacked checkpoint.</summary>
    public RestorePlan Read(string dir, string source, CheckpointSourceKind kind)
    {
        var config = ReadJson(dir, CheckpointFiles.ConfigDump, source, required: true, n => n.Deserialize(CheckpointJson.Default.ConfigDump))!;
        var spec = ReadJson(dir, CheckpointFiles.SpecDump, source, required: true, n => n as JsonObject
            ?? throw new JsonException("it is not a JSON object"))!;
        var status = ReadJson(dir, CheckpointFiles.StatusDump, source, required: false, n => n.Deserialize(CheckpointJson.Default.StatusDump));
        if (!File.Exists(Path.Combine(dir, CheckpointFiles.CriuImages, "inventory.img")))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint {source}: a complete checkpoint cannot be found (checkpoint/inventory.img is missing)");
        }

        var specAnnotations = (spec["annotations"] as JsonObject ?? []).Where(kv => kv.Value is JsonValue).ToDictionary(kv => kv.Key, kv => kv.Value!.ToString(), StringComparer.Ordinal);
        var engine = specAnnotations.GetValueOrDefault(CheckpointFiles.ContainerManagerAnnotation) switch
        {
            "libpod" => CheckpointEngine.Podman,
            "cri-o" => CheckpointEngine.CriO,
            CheckpointFiles.CrestManager => CheckpointEngine.Crest,
            _ => CheckpointEngine.Containerd,
        };

        var annotations = status?.Annotations?.ToDictionary(StringComparer.Ordinal)
            ?? JsonMap(specAnnotations.GetValueOrDefault("io.kubernetes.cri-o.Annotations"), source, "io.kubernetes.cri-o.Annotations")
            ?? new Dictionary<string, string>(StringComparer.Ordinal);
        var labels = status?.Labels?.ToDictionary(StringComparer.Ordinal)
            ?? JsonMap(specAnnotations.GetValueOrDefault("io.kubernetes.cri-o.Labels"), source, "io.kubernetes.cri-o.Labels")
            ?? new Dictionary<string, string>(StringComparer.Ordinal);
        var name = status?.Metadata?.Name is { Length: > 0 } n ? n
            : CrioMetadataName(specAnnotations.GetValueOrDefault("io.kubernetes.cri-o.Metadata"))
            ?? specAnnotations.GetValueOrDefault("io.kubernetes.cri.container-name")
            ?? config.Name;

        // The base image: by digest when the checkpoint knows one; a bare ID only locally; the tag last.
        string? digestRef = null;
        string? imageId = null;
        var imageRef = config.RootfsImageRef ?? "";
        if (IsDigestReference(imageRef))
        {
            digestRef = imageRef;
        }
        else
        {
            digestRef = (specAnnotations.GetValueOrDefault("io.kubernetes.cri-o.ImageRepoDigests") ?? "")
                .Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault(IsDigestReference);
            var hex = imageRef.StartsWith("sha256:", StringComparison.Ordinal) ? imageRef[7..] : imageRef;
            if (hex.Length == 64 && hex.All(char.IsAsciiHexDigitLower))
            {
                imageId = "sha256:" + hex;
            }
        }

        var tag = status?.Image?.Image is { Length: > 0 } shown && !shown.StartsWith("sha256:", StringComparison.Ordinal) ? shown
            : config.RootfsImageName is { Length: > 0 } rn ? rn
            : config.RootfsImage;
        if (tag is not null && !ImageReference.TryParse(tag, out _, out _))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint {source}: config.dump names the base image \"{tag}\", which is not an image reference");
        }

        if (digestRef is null && imageId is null && tag is null)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint {source}: config.dump names no base image (rootfsImageRef and rootfsImageName are empty)");
        }

        var binds = ReadJson(dir, CheckpointFiles.BindMounts, source, required: false, n => n.Deserialize(CheckpointJson.Default.ListBindMountDump)) ?? [];
        var mountDestinations = (spec["mounts"] as JsonArray ?? [])
            .OfType<JsonObject>()
            .Where(m => m["type"]?.ToString() == "bind" || (m["options"] as JsonArray ?? []).Any(o => o?.ToString() is "bind" or "rbind"))
            .Select(m => m["destination"]?.ToString())
            .OfType<string>()
            .Select(d => "/" + d.Trim('/'))
            .Where(d => !SystemMounts.Contains(d))
            .Distinct(StringComparer.Ordinal)
            .ToList();

        ValidateDeletedFiles(dir, source);
        var stagedRounds = ReadStagedRounds(dir, source);
        var diffBytes = ScanRootfsDiff(dir, source);
        var logCopy = new[] { CheckpointFiles.ContainerLog, CheckpointFiles.CrioLog, CheckpointFiles.PodmanLog }.FirstOrDefault(f => FileKinds.IsRegularFile(Path.Combine(dir, f)));
        return new RestorePlan
        {
            Engine = engine,
            SourceKind = kind,
            Source = source,
            BaseImageDigestReference = digestRef,
            BaseImageId = imageId,
            BaseImageName = tag,
            OriginalName = name,
            OriginalRuntime = config.Runtime ?? "",
            ProcessArgs = ((spec["process"] as JsonObject)?["args"] as JsonArray ?? []).Select(a => a?.ToString()).OfType<string>().Take(4096).ToList(),
            JoinedPidNamespace = ((spec["linux"] as JsonObject)?["namespaces"] as JsonArray ?? []).OfType<JsonObject>()
                .Any(n => n["type"]?.ToString() == "pid" && n["path"]?.ToString() is { Length: > 0 }),
            Annotations = annotations,
            Labels = labels,
            CheckpointedAt = CheckpointTime(config, dir),
            BindMounts = binds.Where(b => b is { Source: not null, Destination: not null }).Select(b => new CheckpointBindMount(b.Source, "/" + b.Destination.Trim('/'), b.FileType != "file", b.Permissions & 0xfff)).ToList(),
            MountDestinations = mountDestinations,
            LogCopy = logCopy,
            StagingDir = dir,
            RootfsDiffBytes = diffBytes,
            StagedRootfsRounds = stagedRounds,
            CriuImageBytes = Directory.EnumerateFiles(Path.Combine(dir, CheckpointFiles.CriuImages)).Where(FileKinds.IsRegularFile).Sum(f => new FileInfo(f).Length),
        };
    }

    /// <summary>
    /// config.dump's checkpointedTime; Podman writes none (it keeps that time in its container state, which it does not
    /// export), so the time CRIU wrote checkpoint/inventory.img, as the archive or image layer recorded it, stands in
    /// for it rather than the year 1. Both are the checkpoint's own claims, shown in annotations and never trusted for anything.
    /// </summary>
    private static DateTimeOffset CheckpointTime(ConfigDump config, string dir)
    {
        if (config.CheckpointedTime != default)
        {
            return config.CheckpointedTime;
        }

        var inventory = File.GetLastWriteTimeUtc(Path.Combine(dir, CheckpointFiles.CriuImages, "inventory.img"));
        return inventory > DateTime.UnixEpoch ? new DateTimeOffset(inventory, TimeSpan.Zero) : default;
    }

    /// <summary>The most rounds a frozen delta may sit on (a migration sends a few).</summary>
    public const int MaxStagedRootfsRounds = 64;

    /// <summary>
    /// crest-rootfs-rounds.json, when present: the rounds the archive's rootfs diff sits on, each a SHA-256 in lowercase
    /// hex. Only the restore that has those rounds staged can apply it; the staging directory's name is the target's own.
    /// </summary>
    private List<string>? ReadStagedRounds(string dir, string source)
    {
        if (Directory.Exists(Path.Combine(dir, CheckpointFiles.StagedRootfsRounds)) || File.Exists(Path.Combine(dir, CheckpointFiles.StagedRootfsRounds)))
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"checkpoint {source} holds \"{CheckpointFiles.StagedRootfsRounds}\", a name only the restoring node makes; the archive was not written by a checkpoint");
        }

        var record = ReadJson(dir, CheckpointFiles.RootfsRounds, source, required: false, n => n.Deserialize(CheckpointJson.Default.RootfsRoundsRecord));
        if (record is null)
        {
            return null;
        }

        if (record.Rounds.Count is 0 or > MaxStagedRootfsRounds
            || record.Rounds.Any(r => r is null || r.Length != 64 || !r.All(char.IsAsciiHexDigitLower)))
        {
            throw new CrestException(ErrorKind.InvalidArgument,
                $"failed to read \"{CheckpointFiles.RootfsRounds}\" of checkpoint {source}: expected 1 to {MaxStagedRootfsRounds} rounds, each the SHA-256 of a round in lowercase hex");
        }

        return record.Rounds;
    }

    /// <summary>
    /// deleted.files must be a JSON list of paths inside the rootfs: no ".." component, no NUL, within the path limit.
    /// Checked here so a hostile list is refused at CreateContainer; the removal at start is confined to the rootfs
    /// as well (symlinks inside it are resolved beneath it).
    /// </summary>
    private void ValidateDeletedFiles(string dir, string source)
    {
        var paths = ReadJson(dir, CheckpointFiles.DeletedFiles, source, required: false, n => n.Deserialize(CheckpointJson.Default.ListString));
        foreach (var path in paths ?? [])
        {
            if (path is null || path.Length == 0 || path.Length > limits.MaxPathLength || path.Contains('\0', StringComparison.Ordinal)
                || path.Split('/').Any(part => part == ".."))
            {
                throw new CrestException(ErrorKind.InvalidArgument,
                    $"failed to read \"{CheckpointFiles.DeletedFiles}\" of checkpoint {source}: entry \"{path}\" is not a path inside the container's rootfs (empty, too long, or with a \"..\" component)");
            }
        }
    }

    /// <summary>
    /// Walks the rootfs diff's headers (decompressing a gzip or zstd diff) and refuses it before anything is written
    /// when it would expand past <see cref="RestoreLimits.MaxRootfsDiffBytes"/> or <see cref="RestoreLimits.MaxRootfsDiffEntries"/>:
    /// a compression bomb is stopped at CreateContainer. Returns the bytes it expands to.
    /// </summary>
    private long ScanRootfsDiff(string dir, string source)
    {
        var path = Path.Combine(dir, CheckpointFiles.RootfsDiff);
        if (!FileKinds.IsRegularFile(path))
        {
            return 0;
        }

        long bytes = 0;
        long entries = 0;
        // What the node's disk can take, less the reserve and what restores and pulls beside this one are writing there,
        // is a limit as real as the configured maximum.
        using var disk = limits.TargetFilesystem is { } target ? limits.BudgetOf(target) : null;
        try
        {
            using var file = new FileStream(FileKinds.OpenReadNoFollow(path), FileAccess.Read, 1 << 20);
            if (file.Length == 0)
            {
                // Crest before 2026-12-04 wrote a container that changed nothing as an empty file (RootfsDiff.EmptyTarBytes).
                return 0;
            }

            var compressed = Math.Max(1, file.Length);
            using var stream = CheckpointArchive.OpenRead(file);
            using var reader = new TarReader(stream);
            while (reader.GetNextEntry(copyData: false) is { } entry)
            {
                bytes += entry.Length;
                if (++entries > limits.MaxRootfsDiffEntries || entry.Name.Length > limits.MaxPathLength || bytes > limits.MaxRootfsDiffBytes)
                {
                    throw new CrestException(ErrorKind.InvalidArgument,
                        $"the rootfs diff of checkpoint {source} expands past the configured limits ([restore] max_rootfs_diff_bytes = {limits.MaxRootfsDiffBytes}, max_rootfs_diff_entries = {limits.MaxRootfsDiffEntries}, paths up to {limits.MaxPathLength}); nothing was written");
                }

                if (limits.MaxExpansionRatio > 0 && bytes > limits.RatioCheckFloorBytes && bytes > compressed * limits.MaxExpansionRatio)
                {
                    throw new CrestException(ErrorKind.InvalidArgument,
                        $"the rootfs diff of checkpoint {source} expands to more than {bytes} bytes from {compressed} compressed bytes (at member {entry.Name}), "
                        + $"more than [restore] max_expansion_ratio = {limits.MaxExpansionRatio} allows; raise it for a checkpoint you trust; nothing was written");
                }

                if (disk is not null && bytes > disk.Limit)
                {
                    throw new CrestException(ErrorKind.ResourceExhausted,
                        $"the rootfs diff of checkpoint {source} expands to more than {bytes} bytes (at member {entry.Name}), more than {disk.Describe()}; "
                        + "free space on the node or lower the reserve; nothing was written");
                }
            }
        }
        catch (Exception e) when (e is InvalidDataException or FormatException or EndOfStreamException)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"the rootfs diff of checkpoint {source} is not a readable tar (plain, gzip or zstd): {e.Message}", e);
        }

        return bytes;
    }

    private static bool IsDigestReference(string text) =>
        text.Contains("@sha256:", StringComparison.Ordinal) && ImageReference.TryParse(text, out var r, out _) && r.Digest is not null;

    private static string? CrioMetadataName(string? json)
    {
        if (string.IsNullOrEmpty(json))
        {
            return null;
        }

        try
        {
            return JsonNode.Parse(json)?["name"]?.ToString();
        }
        catch (JsonException)
        {
            return null;
        }
    }

    private static Dictionary<string, string>? JsonMap(string? json, string source, string key)
    {
        if (string.IsNullOrEmpty(json))
        {
            return null;
        }

        try
        {
            return JsonSerializer.Deserialize(json, CheckpointJson.Default.DictionaryStringString);
        }
        catch (JsonException e)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"checkpoint {source}: spec.dump annotation {key} is not a JSON map of strings: {e.Message}", e);
        }
    }

    private T? ReadJson<T>(string dir, string file, string source, bool required, Func<JsonNode, T?> parse)
        where T : class
    {
        var path = Path.Combine(dir, file);
        if (!File.Exists(path))
        {
            return required
                ? throw new CrestException(ErrorKind.InvalidArgument, $"failed to read \"{file}\" of checkpoint {source}: the file is missing; a checkpoint archive needs config.dump, spec.dump and checkpoint/")
                : null;
        }

        if (new FileInfo(path).Length > limits.MaxMetadataBytes)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"failed to read \"{file}\" of checkpoint {source}: it is larger than {limits.MaxMetadataBytes} bytes, the limit for metadata");
        }

        try
        {
            var node = JsonNode.Parse(File.ReadAllBytes(path)) ?? throw new JsonException("it is JSON null");
            return parse(node) ?? throw new JsonException("it is empty");
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"failed to read \"{file}\" of checkpoint {source}: {e.Message}", e);
        }
    }
}
