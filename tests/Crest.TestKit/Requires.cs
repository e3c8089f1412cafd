using Crest.Linux;
using Xunit;

namespace Crest.TestKit;

/// <summary>Environment gates: a test that cannot run here says why it skips, and the skip is counted.</summary>
public static class Requires
{
    public static void Root() =>
        Assert.SkipUnless(Environment.UserName == "root" || GetEuid() == 0, "needs root (run the tests as root, as CI does)");

    public static string Binary(string name)
    {
        var path = ExecutableSearch.Resolve(name);
        Assert.SkipWhen(path is null, $"needs '{name}' on PATH (make deps installs it)");
        return path!;
    }

    /// <summary>An OCI runtime that can run containers on this host (crun cannot on hybrid cgroup hosts with v2 controllers; make deps moves them to v1).</summary>
    public static string Handler(string name)
    {
        var path = Binary(name);
        var controllers = Crest.Linux.CgroupLayout.HybridV2Controllers();
        Assert.SkipWhen(name == "crun" && controllers.Count > 0,
            $"crun refuses this host's hybrid cgroups (v1 plus a v2 hierarchy with {string.Join(", ", controllers)}); make deps binds them to v1 hierarchies, after which crun runs these tests");
        return path;
    }

    public static string Containerd()
    {
        Root();
        return Binary("containerd");
    }

    private static uint GetEuid() => uint.TryParse(
        File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("Uid:", StringComparison.Ordinal))?.Split('\t', StringSplitOptions.RemoveEmptyEntries)[2],
        out var uid) ? uid : uint.MaxValue;
}
