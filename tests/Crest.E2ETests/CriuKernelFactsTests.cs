using System.Diagnostics;
using Crest.TestKit;

namespace Crest.E2ETests;

/// <summary>Alone: the test takes the node's binding off, which the crestds of tests running beside it would race to make again.</summary>
[CollectionDefinition(nameof(CriuKernelFactsTests), DisableParallelization = true)]
public sealed class CriuKernelFactsAlone;

[Collection(nameof(CriuKernelFactsTests))]
public class CriuKernelFactsTests
{
    private const string Kdat = "/run/criu.kdat";

    [Fact]
    public async Task Crestd_keeps_CRIUs_kernel_facts_where_run_is_not_a_tmpfs_and_CRIU_loads_them_instead_of_probing()
    {
        Assert.SkipWhen(RunIsTmpfs(), "/run is a tmpfs on this machine: CRIU keeps /run/criu.kdat there itself");
        var ct = TestContext.Current.CancellationToken;
        // As after a reboot: no bind, an empty placeholder at most.
        while (MountPoints().Contains(Kdat))
        {
            Assert.Equal(0, Run("umount", Kdat).ExitCode);
        }

        File.Delete(Kdat);
        using var dir = new TempDir("crest-e2e-kdat");
        await using var crestd = await CrestdProcess.StartReadyAsync(dir);

        await Eventually.UntilAsync(() => File.Exists(Kdat) && new FileInfo(Kdat).Length > 0 && MountPoints().Contains(Kdat),
            $"{Kdat} bound to gathered facts", ct: ct);
        var log = dir.Combine("check.log");
        var check = Run("criu", "check", "-v4", "--log-file", log);
        var text = await File.ReadAllTextAsync(log, ct);
        Assert.True(check.ExitCode == 0, $"criu check failed: {check.Error}\n{text}");
        Assert.Contains($"Loaded kdat cache from {Kdat}", text, StringComparison.Ordinal);
        // One bind, not one stacked on another (that would pin the lower one's file).
        Assert.Single(StackedMountPoints(), m => m == Kdat);
    }

    private static bool RunIsTmpfs() =>
        File.ReadLines("/proc/self/mountinfo").Select(l => l.Split(' ')).Any(f => f[4] == "/run" && f[Array.IndexOf(f, "-") + 1] == "tmpfs");

    private static HashSet<string> MountPoints() => [.. StackedMountPoints()];

    /// <summary>Every mount point, once for each mount stacked on it.</summary>
    private static List<string> StackedMountPoints() =>
        [.. File.ReadLines("/proc/self/mountinfo").Select(l => l.Split(' ')[4])];

    private static (int ExitCode, string Error) Run(string program, params string[] args)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }

        using var p = Process.Start(start)!;
        var error = p.StandardError.ReadToEnd();
        _ = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, error);
    }
}
