using Crest.Checkpoint.Format;
using Crest.Core;
using Crest.Linux;
using Crest.Runtime;

namespace Crest.Checkpoint;

// A pod checkpoint's output directory: made (or checked empty), filled with the pod's own files, removed on failure.
public sealed partial class PodCheckpointService
{
    /// <summary>
    /// The output directory: absolute, not a link; an existing one must be empty, a new one is made (0700) in an
    /// existing parent. <paramref name="created"/> says which, so a failure removes only what Crest made.
    /// </summary>
    internal static string PrepareOutput(string path, out bool created)
    {
        if (string.IsNullOrWhiteSpace(path) || !Path.IsPathRooted(path))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"pod checkpoint output_path \"{path}\" must be an absolute path to a directory");
        }

        var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        if (FileKinds.IsSymlink(full))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"pod checkpoint output_path {full} is a symbolic link; Crest never writes a checkpoint through a link");
        }

        if (File.Exists(full))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"pod checkpoint output_path {full} is a file; give a new or empty directory");
        }

        if (Directory.Exists(full))
        {
            if (Directory.EnumerateFileSystemEntries(full).Any())
            {
                throw new CrestException(ErrorKind.InvalidArgument, $"pod checkpoint output_path {full} is not empty; Crest writes a pod checkpoint only into a new or empty directory");
            }

            created = false;
            return full;
        }

        var parent = Path.GetDirectoryName(full);
        if (parent is null || !Directory.Exists(parent))
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"pod checkpoint output_path {full}: the directory {parent} does not exist; create it first");
        }

        Directory.CreateDirectory(full, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        created = true;
        return full;
    }

    private static void RemoveOutput(string output, bool created)
    {
        if (!Directory.Exists(output) || FileKinds.IsSymlink(output))
        {
            return;
        }

        if (created)
        {
            Directory.Delete(output, recursive: true);
            return;
        }

        foreach (var entry in Directory.EnumerateFileSystemEntries(output))
        {
            ContainerCheckpointWriter.RemoveFresh(entry);
        }
    }

    /// <summary>The pod's hostname, hosts and resolv.conf as its containers saw them; returns the hostname.</summary>
    private static async Task<string> CopyPodFilesAsync(SandboxBundle bundle, string output, CancellationToken ct)
    {
        var hostname = "";
        foreach (var (source, name) in new[] { (bundle.HostnameFile, PodCheckpointFiles.Hostname), (bundle.HostsFile, PodCheckpointFiles.Hosts), (bundle.ResolvConfFile, PodCheckpointFiles.ResolvConf) })
        {
            if (!FileKinds.IsRegularFile(source))
            {
                continue;
            }

            var bytes = await File.ReadAllBytesAsync(source, ct).ConfigureAwait(false);
            await using (var f = NewFile(Path.Combine(output, name)))
            {
                await f.WriteAsync(bytes, ct).ConfigureAwait(false);
            }

            if (name == PodCheckpointFiles.Hostname)
            {
                hostname = System.Text.Encoding.UTF8.GetString(bytes).Trim();
            }
        }

        return hostname;
    }

    private static FileStream NewFile(string path) => new(path, new FileStreamOptions
    {
        Mode = FileMode.CreateNew,
        Access = FileAccess.Write,
        UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        BufferSize = 1 << 20,
    });
}
