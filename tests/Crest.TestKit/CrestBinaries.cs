using System.Reflection;

namespace Crest.TestKit;

/// <summary>
/// The crest and crestd a test or benchmark runs as processes: the Native AOT binaries that <c>make build</c>
/// (scripts/build.sh) publishes into artifacts/bin, or, with <c>CREST_JIT=1</c>, the JIT builds in
/// src/*/bin/Release/net10.0 (for a debugger). The paths are the calling assembly's metadata: <c>CrestdPath</c> and
/// <c>CrestdJitPath</c>, <c>CrestPath</c> and <c>CrestJitPath</c>.
/// </summary>
public static class CrestBinaries
{
    public static bool Jit => Environment.GetEnvironmentVariable("CREST_JIT") == "1";

    /// <summary>The binary named by <paramref name="key"/> (CrestdPath, CrestPath) in <paramref name="built"/>'s metadata.</summary>
    public static string Resolve(Assembly built, string key)
    {
        ArgumentNullException.ThrowIfNull(built);
        var jit = Metadata(built, key.Replace("Path", "JitPath", StringComparison.Ordinal));
        if (Jit)
        {
            return jit;
        }

        var aot = Metadata(built, key);
        if (!File.Exists(aot))
        {
            throw new InvalidOperationException(
                $"{aot} is missing: run make build (scripts/build.sh publishes crest and crestd as Native AOT binaries), or set CREST_JIT=1 to run the JIT build {jit}");
        }

        // A build after the last publish (dotnet build alone) would leave the tests on old code without a word.
        var newest = Directory.EnumerateFiles(Path.GetDirectoryName(jit)!, "*.dll").Select(File.GetLastWriteTimeUtc).DefaultIfEmpty().Max();
        if (newest > File.GetLastWriteTimeUtc(aot))
        {
            throw new InvalidOperationException(
                $"{aot} is older than its JIT build in {Path.GetDirectoryName(jit)}: run make build (scripts/build.sh) to publish it again, or set CREST_JIT=1 to run the JIT build");
        }

        return aot;
    }

    private static string Metadata(Assembly built, string key) => Path.GetFullPath(built
        .GetCustomAttributes<AssemblyMetadataAttribute>()
        .Single(a => a.Key == key).Value!);
}
