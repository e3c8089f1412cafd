namespace Crest.Linux;

public static class ExecutableSearch
{
    /// <summary>Resolves a command name through PATH (or returns an absolute path that exists); null when not found.</summary>
    public static string? Resolve(string nameOrPath, string? searchPath = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(nameOrPath);
        if (nameOrPath.Contains('/', StringComparison.Ordinal))
        {
            return IsExecutable(nameOrPath) ? Path.GetFullPath(nameOrPath) : null;
        }

        var path = searchPath ?? Environment.GetEnvironmentVariable("PATH") ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        foreach (var dir in path.Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            // Relative PATH entries would make the answer depend on the daemon's working directory.
            if (!Path.IsPathRooted(dir))
            {
                continue;
            }

            var candidate = Path.Combine(dir, nameOrPath);
            if (IsExecutable(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    private static bool IsExecutable(string path)
    {
        var info = new FileInfo(path);
        return info.Exists && (info.UnixFileMode & (UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute)) != 0;
    }
}
