namespace Crest.TestKit;

/// <summary>Writes CNI configurations into a test's own conf dir (the host's /etc/cni/net.d is never touched).</summary>
public static class CniFixture
{
    public const string HostPluginDir = "/usr/lib/cni";

    public static string WriteBridgeConflist(string confDir, string name = "crest-test")
    {
        Directory.CreateDirectory(confDir);
        var path = Path.Combine(confDir, "10-" + name + ".conflist");
        File.WriteAllText(path, $$"""
            {
              "cniVersion": "1.0.0",
              "name": "{{name}}",
              "plugins": [
                { "type": "bridge", "bridge": "crtest0", "isGateway": true, "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.123.0.0/24" }]] } },
                { "type": "portmap", "capabilities": { "portMappings": true } },
                { "type": "loopback" }
              ]
            }
            """);
        return path;
    }
}
