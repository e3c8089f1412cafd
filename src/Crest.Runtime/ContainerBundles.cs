using System.Globalization;
using Crest.Core;
using Crest.Images;
using Crest.Linux;

namespace Crest.Runtime;

/// <summary>
/// A container's home on disk: its directories (<see cref="ContainerBundle"/>), the overlay rootfs over the image's
/// snapshot chain (leased for the container's life), a checkpoint's rootfs changes applied before a restore, and the
/// removal of all of it.
/// </summary>
public sealed class ContainerBundles(RuntimeLayout layout, ImageService images, IImageMetadataStore imageMetadata, ILinux linux, IRestoreSteps restoreSteps, DirectoryReaper reaper)
{
    public ContainerBundle For(string id) => layout.Container(id);

    /// <summary>The image a container is made from; CreateContainer never pulls.</summary>
    public async Task<ImageDetails> ImageAsync(string image, CancellationToken ct) =>
        await images.InspectAsync(image, ct).ConfigureAwait(false)
            ?? throw new CrestException(ErrorKind.NotFound, $"image {image} is not present on this node; pull it first (CreateContainer does not pull)");

    /// <summary>
    /// Leases <paramref name="image"/> for the container and mounts its rootfs: one overlay over the snapshot chain, with
    /// the layers id-mapped through the pod's user namespace when it has one. Returns the image as leased.
    /// </summary>
    public async Task<ImageDetails> MountRootfsAsync(ContainerBundle bundle, string image, SandboxRecord sandbox, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(bundle);
        ArgumentNullException.ThrowIfNull(sandbox);
        // The lease is taken again under the GC lock: the image may have been removed since the lookup at create.
        var details = await images.LeaseAsync(bundle.Id, image, ct).ConfigureAwait(false);
        Directory.CreateDirectory(bundle.Upper);
        Directory.CreateDirectory(bundle.Work);
        Directory.CreateDirectory(bundle.Rootfs);
        var lower = details.Image.ChainId is { } c ? await images.Snapshots.LowerDirsAsync(c, ct).ConfigureAwait(false) : [];
        if (lower.Count == 0)
        {
            Directory.CreateDirectory(bundle.Empty);
            lower = [bundle.Empty];
        }

        try
        {
            if (sandbox.Spec.Namespaces.HasPodUserNamespace)
            {
                lower = IdMapLayers(bundle, lower, sandbox);
            }

            linux.Mount("overlay", bundle.Rootfs, "overlay", MountOptions.None,
                $"lowerdir={string.Join(':', lower)},upperdir={bundle.Upper},workdir={bundle.Work}");
        }
        finally
        {
            // The overlay holds its own references to its layers: the id-mapped binds are needed only to build it.
            UnmountIdMapped(bundle);
        }

        return details;
    }

    /// <summary>Whether anything is still mounted in the container's directory (after a reboot nothing is).</summary>
    public bool IsMounted(ContainerBundle bundle) => linux.MountsUnder(bundle.Dir).Count > 0;

    /// <summary>Applies the rootfs changes of the checkpoint kept in the bundle's restore directory to the new rootfs (diff, deletions, bind-mount sources).</summary>
    public Task ApplyCheckpointAsync(ContainerBundle bundle, ContainerRecord c, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(bundle);
        return restoreSteps.ApplyRootfsAsync(bundle.RestoreDir, bundle.Rootfs, c, ct);
    }

    /// <summary>Tells the checkpoint layer that a restored container's restore ran (see <see cref="IRestoreSteps.RestoreFinishedAsync"/>).</summary>
    public Task RestoreFinishedAsync(ContainerRecord c, SandboxRecord sandbox, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(c);
        return restoreSteps.RestoreFinishedAsync(c, sandbox, ct);
    }

    public void UnmountRootfs(ContainerBundle bundle) => linux.Unmount(bundle.Rootfs);

    /// <summary>
    /// Deletes a restore directory (a container's, or a checkpoint being staged for one) after unmounting whatever is
    /// mounted under it, deepest first: an archive's page images served in place are a read-only mount there. A mount
    /// that does not go keeps the directory, for crestd's next start.
    /// </summary>
    public void DeleteRestoreDirectory(string dir)
    {
        // Most containers were never restored: no directory, and no read of the mount table on their removal.
        if (!Directory.Exists(dir))
        {
            return;
        }

        foreach (var mount in linux.MountsUnder(dir).OrderByDescending(m => m.Length))
        {
            linux.Unmount(mount);
        }

        if (linux.MountsUnder(dir).Count == 0)
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Detaches every id-mapped layer bind under the container directory and removes their mount points.</summary>
    public void UnmountIdMapped(ContainerBundle bundle)
    {
        ArgumentNullException.ThrowIfNull(bundle);
        if (!Directory.Exists(bundle.IdMapped))
        {
            return;
        }

        foreach (var mount in linux.MountsUnder(bundle.IdMapped).OrderByDescending(m => m.Length))
        {
            linux.Unmount(mount);
        }

        if (linux.MountsUnder(bundle.IdMapped).Count == 0)
        {
            Directory.Delete(bundle.IdMapped, recursive: true);
        }
    }

    /// <summary>
    /// Removes the container's directories and conmon's files for it; call only once nothing is mounted there. The
    /// container directory (rootfs, writable layer, bundle) leaves at once and is deleted in the background.
    /// </summary>
    public void DeleteFiles(ContainerBundle bundle)
    {
        ArgumentNullException.ThrowIfNull(bundle);
        reaper.Discard(bundle.Dir);

        if (Directory.Exists(bundle.StateDir))
        {
            Directory.Delete(bundle.StateDir, recursive: true);
        }

        if (File.Exists(bundle.ExitFile))
        {
            File.Delete(bundle.ExitFile);
        }

        DeleteAttachLink(bundle.AttachDir);
    }

    /// <summary>
    /// Removes conmon's attach entry (<c>--socket-dir-path</c>/ID, a link to the bundle). Checked as a link, not as a
    /// directory: once the bundle is gone the link dangles and Directory.Exists no longer sees it.
    /// </summary>
    public static void DeleteAttachLink(string path)
    {
        var entry = new FileInfo(path);
        if (entry.LinkTarget is not null)
        {
            entry.Delete();
        }
        else if (Directory.Exists(path))
        {
            Directory.Delete(path, recursive: true);
        }
    }

    /// <summary>Ends the container's lease on its image's snapshots, so image GC may collect them.</summary>
    public Task ReleaseImageAsync(ContainerBundle bundle, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(bundle);
        return imageMetadata.RemoveSnapshotLeasesAsync(bundle.Id, ct);
    }

    /// <summary>
    /// Binds each image layer id-mapped through the pod's user namespace (under <c>idmapped/N</c>), so the overlay
    /// shows files owned by host uid 0 as the pod's root; the writable layer is made the pod's root's own. Returns the
    /// new lower directories, in the same order.
    /// </summary>
    private List<string> IdMapLayers(ContainerBundle bundle, IReadOnlyList<string> lower, SandboxRecord sandbox)
    {
        var userns = sandbox.PinnedNamespaces.TryGetValue("user", out var file) ? file
            : throw new CrestException(ErrorKind.FailedPrecondition, $"pod sandbox {sandbox.Id} has a user namespace of its own but no pinned namespace file for it; recreate the pod");
        var (uid, gid) = sandbox.Spec.Namespaces.User!.HostRoot();
        linux.Chown(bundle.Upper, uid, gid);
        linux.Chown(bundle.Work, uid, gid);
        var result = new List<string>(lower.Count);
        for (var i = 0; i < lower.Count; i++)
        {
            var target = Directory.CreateDirectory(Path.Combine(bundle.IdMapped, i.ToString(CultureInfo.InvariantCulture))).FullName;
            linux.BindIdMapped(lower[i], target, userns);
            result.Add(target);
        }

        return result;
    }
}
