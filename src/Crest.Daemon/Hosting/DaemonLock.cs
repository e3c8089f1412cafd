using Crest.Core;

namespace Crest.Daemon.Hosting;

/// <summary>
/// An exclusive lock on &lt;state&gt;/crestd.lock held for the daemon's life, so two crestd never share
/// one set of roots. .NET takes flock(LOCK_EX|LOCK_NB) for FileShare.None; the kernel drops it if we die.
/// </summary>
internal sealed class DaemonLock : IDisposable
{
    private readonly FileStream[] _files;

    private DaemonLock(FileStream[] files) => _files = files;

    /// <summary>Locks every path (the state and the root), or none.</summary>
    public static DaemonLock Acquire(params string[] paths)
    {
        var files = new List<FileStream>();
        try
        {
            foreach (var path in paths)
            {
                files.Add(Lock(path));
            }
        }
        catch
        {
            files.ForEach(f => f.Dispose());
            throw;
        }

        return new DaemonLock([.. files]);
    }

    private static FileStream Lock(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        try
        {
            var file = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            file.SetLength(0);
            using (var w = new StreamWriter(file, leaveOpen: true))
            {
                w.Write(Environment.ProcessId);
            }

            file.Flush();
            return file;
        }
        catch (IOException e)
        {
            throw new CrestException(ErrorKind.AlreadyExists,
                $"another crestd holds {path}; stop it first or run this one with its own --root, --state and --socket", e);
        }
    }

    public void Dispose()
    {
        foreach (var f in _files)
        {
            f.Dispose();
        }
    }
}
