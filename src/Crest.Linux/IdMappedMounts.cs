using System.Runtime.InteropServices;
using Crest.Core;

namespace Crest.Linux;

/// <summary>
/// Id-mapped bind mounts (open_tree, mount_setattr MOUNT_ATTR_IDMAP, move_mount): files owned by host ids appear
/// owned by the ids a user namespace maps them to, so a pod's root sees an image's root-owned files as its own.
/// </summary>
public static class IdMappedMounts
{
    /// <summary>Binds <paramref name="source"/> onto <paramref name="target"/> with the id mapping of the user namespace file <paramref name="userNamespaceFile"/>.</summary>
    public static unsafe void Bind(string source, string target, string userNamespaceFile)
    {
        var userns = Interop.Open(userNamespaceFile, Interop.O_RDONLY | Interop.O_CLOEXEC, 0);
        if (userns < 0)
        {
            throw new CrestException(ErrorKind.Internal, $"user namespace {userNamespaceFile} cannot be opened: {Marshal.GetLastPInvokeErrorMessage()}");
        }

        try
        {
            var tree = DetachedIdMappedTree(source, userns, userNamespaceFile);
            try
            {
                if (Interop.MoveMount(tree, "", Interop.AT_FDCWD, target, Interop.MOVE_MOUNT_F_EMPTY_PATH) != 0)
                {
                    throw new CrestException(ErrorKind.Internal, $"attaching the id-mapped copy of {source} at {target} failed: {Marshal.GetLastPInvokeErrorMessage()}");
                }
            }
            finally
            {
                _ = Interop.Close(tree);
            }
        }
        finally
        {
            _ = Interop.Close(userns);
        }
    }

    /// <summary>
    /// Why <paramref name="directory"/>'s filesystem cannot carry id-mapped mounts, or null when it can: the same test
    /// critest makes (a throwaway user namespace from <c>unshare --user</c>, mapped by us, then an id-mapped detached copy
    /// of the directory that is never attached). A user namespace needs a process, and .NET is multithreaded, so
    /// unshare(2) in crestd itself is refused (EINVAL); a child does it.
    /// </summary>
    public static string? Problem(string directory, TimeSpan timeout)
    {
        if (!File.Exists("/proc/self/ns/user"))
        {
            return "the kernel has no user namespaces (CONFIG_USER_NS)";
        }

        var max = File.Exists("/proc/sys/user/max_user_namespaces") ? File.ReadAllText("/proc/sys/user/max_user_namespaces").Trim() : "1";
        if (max == "0")
        {
            return "user namespaces are disabled (/proc/sys/user/max_user_namespaces is 0)";
        }

        var unshare = ExecutableSearch.Resolve("unshare");
        var sleep = ExecutableSearch.Resolve("sleep");
        if (unshare is null || sleep is null)
        {
            return "unshare or sleep (util-linux, coreutils) is not on PATH; they make the throwaway user namespace of the id-mapped mount check";
        }

        ChildProcess child;
        try
        {
            child = ChildProcess.Spawn(unshare, ["unshare", "--user", "--", sleep, "30"], [ChildFd.Null(0), ChildFd.Null(1), ChildFd.Null(2)]);
        }
        catch (Exception e) when (e is IOException or CrestException)
        {
            return $"unshare --user could not be started: {e.Message}";
        }

        try
        {
            var own = ReadLink("/proc/self/ns/user");
            var file = $"/proc/{child.Pid}/ns/user";
            // A monotonic clock: a wall clock set back while waiting would stretch the bound.
            var started = System.Diagnostics.Stopwatch.GetTimestamp();
            while (ReadLink(file) is not { } ns || ns == own)
            {
                if (System.Diagnostics.Stopwatch.GetElapsedTime(started) > timeout)
                {
                    return "unshare --user did not make a user namespace in time (are unprivileged or nested user namespaces restricted?)";
                }

                Thread.Sleep(5);
            }

            // Any mapping will do; a namespace with no mapping cannot be used for an id-mapped mount.
            File.WriteAllText($"/proc/{child.Pid}/uid_map", "0 1000 65536\n");
            File.WriteAllText($"/proc/{child.Pid}/gid_map", "0 1000 65536\n");
            var userns = Interop.Open(file, Interop.O_RDONLY | Interop.O_CLOEXEC, 0);
            if (userns < 0)
            {
                return $"{file} cannot be opened: {Marshal.GetLastPInvokeErrorMessage()}";
            }

            try
            {
                _ = Interop.Close(DetachedIdMappedTree(directory, userns, file));
                return null;
            }
            catch (CrestException e)
            {
                return e.Message;
            }
            finally
            {
                _ = Interop.Close(userns);
            }
        }
        catch (IOException e)
        {
            return $"setting up the throwaway user namespace failed: {e.Message}";
        }
        finally
        {
            child.KillAndReap();
        }
    }

    private static unsafe int DetachedIdMappedTree(string source, int userns, string userNamespaceFile)
    {
        var tree = Interop.OpenTree(Interop.AT_FDCWD, source, Interop.OPEN_TREE_CLONE | Interop.OPEN_TREE_CLOEXEC);
        if (tree < 0)
        {
            throw new CrestException(ErrorKind.Internal, $"open_tree({source}) failed: {Marshal.GetLastPInvokeErrorMessage()} (the kernel needs the new mount API, Linux 5.12+)");
        }

        var attr = new Interop.MountAttr { AttrSet = Interop.MOUNT_ATTR_IDMAP, UsernsFd = (ulong)userns };
        if (Interop.MountSetAttr(tree, "", Interop.AT_EMPTY_PATH, &attr, (nuint)sizeof(Interop.MountAttr)) != 0)
        {
            var message = Marshal.GetLastPInvokeErrorMessage();
            _ = Interop.Close(tree);
            throw new CrestException(ErrorKind.Internal,
                $"id-mapping {source} with the user namespace {userNamespaceFile} failed: {message} (its filesystem must support id-mapped mounts)");
        }

        return tree;
    }

    private static string? ReadLink(string path)
    {
        try
        {
            return new FileInfo(path).LinkTarget;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>The first directory from <paramref name="path"/> up to / that others (a pod's mapped ids) cannot search, or null.</summary>
    public static string? FirstUnsearchable(string path)
    {
        for (var dir = Path.GetFullPath(path); !string.IsNullOrEmpty(dir); dir = Path.GetDirectoryName(dir))
        {
            if (Directory.Exists(dir) && (File.GetUnixFileMode(dir) & UnixFileMode.OtherExecute) == 0)
            {
                return dir + " (mode " + Convert.ToString((int)File.GetUnixFileMode(dir), 8).PadLeft(4, '0') + ")";
            }
        }

        return null;
    }
}
