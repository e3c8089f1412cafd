namespace Crest.Core;

/// <summary>The CRIU binary as Crest found it.</summary>
/// <param name="Path">the binary that was asked</param>
/// <param name="Version">dotted version, e.g. 4.2.1; null when CRIU could not be asked</param>
/// <param name="VersionNumber">major*10000 + minor*100 + sublevel, the formula checkpointctl and go-criu use</param>
/// <param name="Problem">why CRIU cannot be used, for the operator; null when it can</param>
/// <param name="Features">what CRIU's FEATURE_CHECK reported for this kernel (as <c>criu check --feature</c>); null when not asked</param>
public sealed record CriuInfo(string Path, string? Version, int VersionNumber, string? Problem, CriuFeatures? Features = null)
{
    public bool Usable => Problem is null;
}

/// <summary>
/// Kernel features live migration strategies need, as CRIU checks them. <paramref name="MemoryTracking"/>: soft-dirty
/// page tracking (<c>criu check --feature mem_dirty_track</c>; memory pre-copy and pre-dump need it; a kernel built
/// without CONFIG_MEM_SOFT_DIRTY lacks it). <paramref name="LazyPages"/>: userfaultfd with non-cooperative events
/// (<c>uffd-noncoop</c>; post-copy restores with <c>--lazy-pages</c> need it). <paramref name="PageServerProblem"/>:
/// why CRIU's lazy page server would fail on this node although the kernel has userfaultfd (null: it would not).
/// </summary>
public sealed record CriuFeatures(bool MemoryTracking, bool LazyPages, string? PageServerProblem = null);

/// <summary>Asks the CRIU binary for its version (seam: the real one speaks CRIU's RPC over criu swrk).</summary>
public interface ICriuProbe
{
    Task<CriuInfo> ProbeAsync(CancellationToken ct);
}

/// <summary>One live migration strategy on this node: whether it can be used, and why not.</summary>
public sealed record MigrationStrategySupport(string Strategy, bool Supported, string? Reason);

/// <summary>Which live migration strategies a node supports, from its CRIU and kernel (Status, `crest info`, crest.v1.CrestMigration).</summary>
public static class MigrationSupport
{
    public static IReadOnlyList<MigrationStrategySupport> From(CriuInfo criu)
    {
        ArgumentNullException.ThrowIfNull(criu);
        if (criu.Problem is { } problem)
        {
            return [new("stop-copy", false, problem), new("post-copy", false, problem), new("pre-copy", false, problem)];
        }

        var features = criu.Features ?? new CriuFeatures(false, false);
        return
        [
            new("stop-copy", true, null),
            !features.LazyPages
                ? new("post-copy", false, "post-copy needs userfaultfd with non-cooperative events, which this kernel lacks (criu check --feature uffd-noncoop fails); use --strategy stop-copy")
                : features.PageServerProblem is { } pageServer
                    ? new("post-copy", false, pageServer + "; or use --strategy stop-copy")
                    : new("post-copy", true, null),
            new("pre-copy", false, features.MemoryTracking
                ? "pre-copy is not built in this version of Crest yet, although this kernel tracks dirty memory (soft-dirty); use --strategy stop-copy"
                : "pre-copy needs soft-dirty memory tracking, which this kernel lacks (criu check --feature mem_dirty_track: \"Dirty tracking is OFF\"; the kernel needs CONFIG_MEM_SOFT_DIRTY); use --strategy stop-copy"),
        ];
    }
}
