namespace Crest.Oci;

/// <summary>Which manifest of an index fits this node (linux on this machine's architecture, best variant first).</summary>
public static class Platforms
{
    public static string CurrentArchitecture { get; } = System.Runtime.InteropServices.RuntimeInformation.OSArchitecture switch
    {
        System.Runtime.InteropServices.Architecture.X64 => "amd64",
        System.Runtime.InteropServices.Architecture.Arm64 => "arm64",
        System.Runtime.InteropServices.Architecture.Arm => "arm",
        System.Runtime.InteropServices.Architecture.S390x => "s390x",
        System.Runtime.InteropServices.Architecture.Ppc64le => "ppc64le",
        System.Runtime.InteropServices.Architecture.RiscV64 => "riscv64",
        var other => other.ToString().ToLowerInvariant(),
    };

    /// <summary>Picks the manifest for linux/<paramref name="architecture"/>; for amd64 the plain entry and v1 variant before v2/v3.</summary>
    public static Descriptor? Choose(IEnumerable<Descriptor> manifests, string os = "linux", string? architecture = null)
    {
        ArgumentNullException.ThrowIfNull(manifests);
        var arch = architecture ?? CurrentArchitecture;
        return manifests
            .Where(m => m.Platform is { } p && p.Os == os && p.Architecture == arch && MediaTypes.IsManifest(m.MediaType))
            .OrderBy(m => VariantRank(arch, m.Platform!.Variant))
            .FirstOrDefault();
    }

    private static int VariantRank(string arch, string? variant) => (arch, variant) switch
    {
        (_, null or "") => 0,
        ("amd64", "v1") => 1,
        ("arm64", "v8") => 1,
        ("arm", "v7") => 1,
        ("arm", "v6") => 2,
        _ => 10,
    };
}
