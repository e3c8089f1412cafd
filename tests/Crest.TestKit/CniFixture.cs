namespace Crest.TestKit;

/// <summary>Writes CNI configurations into a test's own conf dir (the host's /etc/cni/net.d is never touched).</summary>
public static class CniFixture
{
    public const string HostPluginDir = "/usr/lib/cni";

    /// <summary>
    /// One bridge and one host-local allocator (the network name) for every test, crestd's and containerd's alike. A /16:
    /// host-local hands addresses out in turn, and a full run creates a few hundred pods; in a /24 it wrapped around
    /// and gave a just-freed address to a new pod while the host still held the old pod's MAC for it (a stale
    /// neighbour entry), so connections to the new pod hung.
    /// </summary>
    /// <remarks>
    /// Another node on the same machine passes its own <paramref name="bridge"/> and <paramref name="subnet"/> (and
    /// name, which is host-local's allocation directory), so two crestd never share a bridge or an address pool.
    /// </remarks>
    public static string WriteBridgeConflist(string confDir, string name = "crest-test", string bridge = "crtest1", string subnet = "10.124.0.0/16")
    {
        Directory.CreateDirectory(confDir);
        var path = Path.Combine(confDir, "10-" + name + ".conflist");
        File.WriteAllText(path, $$"""
            {
              "cniVersion": "1.0.0",
              "name": "{{name}}",
              "plugins": [
                { "type": "bridge", "bridge": "{{bridge}}", "isGateway": true, "ipam": { "type": "host-local", "ranges": [[{ "subnet": "{{subnet}}" }]] } },
                { "type": "portmap", "capabilities": { "portMappings": true } },
                { "type": "loopback" }
              ]
            }
            """);
        return path;
    }
}
