using System.Diagnostics;
using System.Formats.Tar;
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Crest.TestKit;

/// <summary>How a layer blob is compressed.</summary>
public enum LayerCompression
{
    None,
    Gzip,
    Zstd,
}

/// <summary>One layer to build: entries written in order, then compressed.</summary>
public sealed record TestLayer(LayerCompression Compression, Action<TarWriter> Write);

/// <summary>
/// Builds OCI image layouts offline (no registry, no network): layers from the host's busybox-static,
/// with whiteouts, hard links, symlinks and zstd where a test wants them; pushes them with skopeo.
/// </summary>
public static class TestImages
{
    public const string BusyboxStatic = "/bin/busybox";

    /// <summary>
    /// The busybox root filesystem the E2E tests run: /bin/busybox and /bin/sh linking to it; with
    /// <paramref name="motdAndRoot"/> also /etc/motd and an empty /root, which the checkpoint tests delete and add to.
    /// </summary>
    public static void BusyboxRootfs(TarWriter t, bool motdAndRoot = false)
    {
        Dir(t, "bin");
        if (motdAndRoot)
        {
            Dir(t, "etc");
            Dir(t, "root");
        }

        File(t, "bin/busybox", System.IO.File.ReadAllBytes(BusyboxStatic), mode: 0x1ED);
        Symlink(t, "bin/sh", "busybox");
        if (motdAndRoot)
        {
            File(t, "etc/motd", "welcome\n"u8.ToArray(), mode: 0x1A4);
        }
    }

    /// <summary>A three-layer image: busybox with links (gzip), a whiteout and a new file (zstd), an opaque dir (plain).</summary>
    public static IReadOnlyList<TestLayer> StandardLayers() =>
    [
        new(LayerCompression.Gzip, t =>
        {
            Dir(t, "bin");
            Dir(t, "etc");
            Dir(t, "data");
            Dir(t, "root", mode: 0x1C0);
            File(t, "bin/busybox", System.IO.File.ReadAllBytes(BusyboxStatic), mode: 0x1ED);
            Symlink(t, "bin/sh", "busybox");
            HardLink(t, "bin/cat", "bin/busybox");
            File(t, "etc/motd", "welcome\n"u8.ToArray());
            File(t, "etc/owned", "uid 1234\n"u8.ToArray(), uid: 1234, gid: 4321);
            File(t, "data/old", "old\n"u8.ToArray());
        }),
        new(LayerCompression.Zstd, t =>
        {
            Dir(t, "etc");
            Whiteout(t, "etc/motd");
            File(t, "etc/hello", "hello from layer 2\n"u8.ToArray());
        }),
        new(LayerCompression.None, t =>
        {
            Dir(t, "data");
            File(t, "data/.wh..wh..opq", []);
            File(t, "data/new", "new\n"u8.ToArray());
        }),
    ];

    /// <summary>
    /// Writes an OCI layout for <paramref name="layers"/> under <paramref name="dir"/> and returns the manifest digest;
    /// <paramref name="manifestAnnotations"/>, if any, go on the manifest (where checkpoint images carry their marker).
    /// </summary>
    public static string WriteLayout(string dir, IReadOnlyList<TestLayer> layers, string tag = "latest", Action<JsonObject>? editConfig = null,
        IReadOnlyDictionary<string, string>? manifestAnnotations = null)
    {
        Directory.CreateDirectory(Path.Combine(dir, "blobs", "sha256"));
        System.IO.File.WriteAllText(Path.Combine(dir, "oci-layout"), """{"imageLayoutVersion":"1.0.0"}""");
        var diffIds = new JsonArray();
        var layerDescriptors = new JsonArray();
        foreach (var layer in layers)
        {
            var tar = new MemoryStream();
            using (var writer = new TarWriter(tar, TarEntryFormat.Pax, leaveOpen: true))
            {
                layer.Write(writer);
            }

            var plain = tar.ToArray();
            diffIds.Add("sha256:" + Convert.ToHexStringLower(SHA256.HashData(plain)));
            var (blob, mediaType) = Compress(plain, layer.Compression);
            layerDescriptors.Add(new JsonObject { ["mediaType"] = mediaType, ["digest"] = Blob(dir, blob), ["size"] = blob.Length });
        }

        var config = new JsonObject
        {
            ["created"] = "2026-11-28T00:00:00Z",
            ["architecture"] = Oci.Platforms.CurrentArchitecture,
            ["os"] = "linux",
            ["config"] = new JsonObject
            {
                ["Env"] = new JsonArray("PATH=/bin"),
                ["Cmd"] = new JsonArray("/bin/sh"),
                ["User"] = "0",
            },
            ["rootfs"] = new JsonObject { ["type"] = "layers", ["diff_ids"] = diffIds },
        };
        editConfig?.Invoke(config);
        var configBytes = Encoding.UTF8.GetBytes(config.ToJsonString());
        var manifest = new JsonObject
        {
            ["schemaVersion"] = 2,
            ["mediaType"] = "application/vnd.oci.image.manifest.v1+json",
            ["config"] = new JsonObject { ["mediaType"] = "application/vnd.oci.image.config.v1+json", ["digest"] = Blob(dir, configBytes), ["size"] = configBytes.Length },
            ["layers"] = layerDescriptors,
        };
        if (manifestAnnotations is not null)
        {
            manifest["annotations"] = new JsonObject(manifestAnnotations.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value)));
        }

        var manifestBytes = Encoding.UTF8.GetBytes(manifest.ToJsonString());
        var manifestDigest = Blob(dir, manifestBytes);
        var index = new JsonObject
        {
            ["schemaVersion"] = 2,
            ["mediaType"] = "application/vnd.oci.image.index.v1+json",
            ["manifests"] = new JsonArray(new JsonObject
            {
                ["mediaType"] = "application/vnd.oci.image.manifest.v1+json",
                ["digest"] = manifestDigest,
                ["size"] = manifestBytes.Length,
                ["annotations"] = new JsonObject { ["org.opencontainers.image.ref.name"] = tag },
            }),
        };
        System.IO.File.WriteAllText(Path.Combine(dir, "index.json"), index.ToJsonString());
        return manifestDigest;
    }

    /// <summary>Pushes an OCI layout to a registry with skopeo (an independent client), plain HTTP.</summary>
    public static async Task PushAsync(string layoutDir, string tag, string destination, string? creds = null)
    {
        var skopeo = Requires.Binary("skopeo");
        var args = new List<string> { "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests" };
        if (creds is not null)
        {
            args.AddRange(["--dest-creds", creds]);
        }

        args.AddRange([$"oci:{layoutDir}:{tag}", $"docker://{destination}"]);
        var start = new ProcessStartInfo(skopeo, args) { RedirectStandardError = true, RedirectStandardOutput = true };
        using var p = Process.Start(start)!;
        var err = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"skopeo copy to {destination} failed: {err}");
        }
    }

    /// <summary>Tars a directory (an OCI layout) into an archive file.</summary>
    public static void TarDirectory(string dir, string archive) => TarFile.CreateFromDirectory(dir, archive, includeBaseDirectory: false);

    public static string Blob(string dir, byte[] content)
    {
        var hex = Convert.ToHexStringLower(SHA256.HashData(content));
        System.IO.File.WriteAllBytes(Path.Combine(dir, "blobs", "sha256", hex), content);
        return "sha256:" + hex;
    }

    public static (byte[] Blob, string MediaType) Compress(byte[] plain, LayerCompression compression)
    {
        switch (compression)
        {
            case LayerCompression.Gzip:
                var gz = new MemoryStream();
                using (var z = new GZipStream(gz, CompressionLevel.Fastest, leaveOpen: true))
                {
                    z.Write(plain);
                }

                return (gz.ToArray(), "application/vnd.oci.image.layer.v1.tar+gzip");
            case LayerCompression.Zstd:
                using (var compressor = new ZstdSharp.Compressor(3))
                {
                    return (compressor.Wrap(plain).ToArray(), "application/vnd.oci.image.layer.v1.tar+zstd");
                }

            default:
                return (plain, "application/vnd.oci.image.layer.v1.tar");
        }
    }

    public static void Dir(TarWriter t, string name, int mode = 0x1ED) =>
        t.WriteEntry(new PaxTarEntry(TarEntryType.Directory, name + "/") { Mode = (UnixFileMode)mode, ModificationTime = Epoch });

    public static void File(TarWriter t, string name, byte[] content, int mode = 0x1A4, int uid = 0, int gid = 0) =>
        t.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, name)
        {
            DataStream = new MemoryStream(content),
            Mode = (UnixFileMode)mode,
            Uid = uid,
            Gid = gid,
            ModificationTime = Epoch,
        });

    public static void Symlink(TarWriter t, string name, string target) =>
        t.WriteEntry(new PaxTarEntry(TarEntryType.SymbolicLink, name) { LinkName = target, Mode = (UnixFileMode)0x1FF, ModificationTime = Epoch });

    public static void HardLink(TarWriter t, string name, string target) =>
        t.WriteEntry(new PaxTarEntry(TarEntryType.HardLink, name) { LinkName = target, Mode = (UnixFileMode)0x1ED, ModificationTime = Epoch });

    public static void Whiteout(TarWriter t, string path)
    {
        var slash = path.LastIndexOf('/');
        var name = slash < 0 ? ".wh." + path : path[..(slash + 1)] + ".wh." + path[(slash + 1)..];
        File(t, name, []);
    }

    private static readonly DateTimeOffset Epoch = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);
}
