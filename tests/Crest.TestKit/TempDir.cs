using System.Runtime.InteropServices;
using System.Text;

namespace Crest.TestKit;

/// <summary>
/// A private temporary directory, removed on dispose. Short paths: unix socket paths must stay under 108 bytes.
/// What cannot be removed is a leak of the code under test or of the test's cleanup: dispose detaches mounts still below
/// the directory (so the next test starts clean), removes what it can and reports the rest through <see cref="ReportLeak"/>.
/// </summary>
public sealed partial class TempDir : IDisposable
{
    private const int MntDetach = 2;

    public TempDir(string prefix = "crest-test")
    {
        Path = Directory.CreateTempSubdirectory(prefix + "-").FullName;
    }

    /// <summary>
    /// Where leaks go. Test projects that can fail a test after it ran (see LeakCheck in the E2E and integration
    /// projects) point it there once; elsewhere (unit tests, the bench) it is written to stderr. Dispose never throws, so
    /// a leak report never hides the failure that caused the leak.
    /// </summary>
    public static Action<string> ReportLeak { get; set; } = message => Console.Error.WriteLine(message);

    public string Path { get; }

    public string Combine(params string[] parts) => System.IO.Path.Combine([Path, .. parts]);

    public string CreateDirectory(params string[] parts) => Directory.CreateDirectory(Combine(parts)).FullName;

    public void Dispose()
    {
        if (TryDelete(out _))
        {
            return;
        }

        // Deepest first, detached: a busy mount goes away once its last user does, and the tree can be removed now.
        var mounts = MountsBelow(Path);
        foreach (var mount in mounts)
        {
            _ = Umount2(mount, MntDetach);
        }

        var message = new StringBuilder($"TempDir {Path} was not empty of mounts or could not be removed at dispose.");
        if (mounts.Count > 0)
        {
            message.Append($" Still mounted (now detached): {string.Join(", ", mounts)}.");
        }

        if (!TryDelete(out var error))
        {
            message.Append($" Left on disk: {error}");
        }

        ReportLeak(message.ToString());
    }

    /// <summary>Mount points at or below <paramref name="root"/> in this mount namespace, deepest first.</summary>
    public static List<string> MountsBelow(string root)
    {
        ArgumentNullException.ThrowIfNull(root);
        var prefix = root.TrimEnd('/') + "/";
        var mounts = new List<string>();
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            // "36 35 98:0 /mnt1 /mnt/point rw,noatime master:1 - ext3 /dev/root rw": the fifth field is the mount point.
            var fields = line.Split(' ');
            if (fields.Length > 4 && Unescape(fields[4]) is var point && (point == root || point.StartsWith(prefix, StringComparison.Ordinal)))
            {
                mounts.Add(point);
            }
        }

        return [.. mounts.Distinct(StringComparer.Ordinal).OrderByDescending(m => m.Length)];
    }

    private bool TryDelete(out string? error)
    {
        try
        {
            if (Directory.Exists(Path))
            {
                Directory.Delete(Path, recursive: true);
            }

            error = null;
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            error = e.Message;
            return false;
        }
    }

    /// <summary>mountinfo escapes space, tab, newline and backslash as \ooo.</summary>
    private static string Unescape(string field)
    {
        if (!field.Contains('\\', StringComparison.Ordinal))
        {
            return field;
        }

        var result = new StringBuilder(field.Length);
        for (var i = 0; i < field.Length; i++)
        {
            if (field[i] == '\\' && i + 3 < field.Length && IsOctal(field.AsSpan(i + 1, 3)))
            {
                result.Append((char)Convert.ToInt32(field.Substring(i + 1, 3), 8));
                i += 3;
            }
            else
            {
                result.Append(field[i]);
            }
        }

        return result.ToString();
    }

    private static bool IsOctal(ReadOnlySpan<char> digits) => digits.Length == 3 && !digits.ContainsAnyExceptInRange('0', '7');

    [LibraryImport("libc", EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Umount2(string target, int flags);
}
