namespace Crest.Core;

/// <summary>The CRIU binary as Crest found it.</summary>
/// <param name="Path">the binary that was asked</param>
/// <param name="Version">dotted version, e.g. 4.2.1; null when CRIU could not be asked</param>
/// <param name="VersionNumber">major*10000 + minor*100 + sublevel, the formula checkpointctl and go-criu use</param>
/// <param name="Problem">why CRIU cannot be used, for the operator; null when it can</param>
public sealed record CriuInfo(string Path, string? Version, int VersionNumber, string? Problem)
{
    public bool Usable => Problem is null;
}

/// <summary>Asks the CRIU binary for its version (seam: the real one speaks CRIU's RPC over criu swrk).</summary>
public interface ICriuProbe
{
    Task<CriuInfo> ProbeAsync(CancellationToken ct);
}
