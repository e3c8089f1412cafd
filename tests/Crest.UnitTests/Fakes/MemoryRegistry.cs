using System.Collections.Concurrent;
using System.Text.Json.Nodes;
using Crest.Core;
using Crest.Images;
using Crest.TestKit;

namespace Crest.UnitTests.Fakes;

/// <summary>
/// An <see cref="IRegistryClient"/> answering from memory: images are published from OCI layouts that
/// <see cref="TestImages.WriteLayout"/> wrote, so a pull runs without a socket; pushes are kept, each blob checked against its digest.
/// </summary>
internal sealed class MemoryRegistry : IRegistryClient
{
    private const string OciManifest = "application/vnd.oci.image.manifest.v1+json";

    private readonly ConcurrentDictionary<(string Name, string Reference), byte[]> _manifests = new();
    private readonly ConcurrentDictionary<Digest, byte[]> _blobs = new();

    /// <summary>Blob requests answered, counted so a test can tell a reused layer from a fetched one.</summary>
    public ConcurrentDictionary<Digest, int> BlobRequests { get; } = new();

    /// <summary>Serves the layout's one image as <paramref name="reference"/> (name:tag) and by its manifest digest.</summary>
    public void Publish(string reference, string layoutDir)
    {
        var image = ImageReference.Parse(reference);
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(layoutDir, "index.json")))!;
        var manifestDigest = (string)index["manifests"]![0]!["digest"]!;
        foreach (var blob in Directory.EnumerateFiles(Path.Combine(layoutDir, "blobs", "sha256")))
        {
            _blobs[Digest.Parse("sha256:" + Path.GetFileName(blob))] = File.ReadAllBytes(blob);
        }

        var manifest = _blobs[Digest.Parse(manifestDigest)];
        _manifests[(image.Name, image.Tag!)] = manifest;
        _manifests[(image.Name, manifestDigest)] = manifest;
    }

    public Task<FetchedManifest> GetManifestAsync(ImageReference image, string reference, RegistryCredentials? credentials, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(image);
        return _manifests.TryGetValue((image.Name, reference), out var bytes)
            ? Task.FromResult(new FetchedManifest(bytes, OciManifest, Digest.Of(bytes)))
            : throw new CrestException(ErrorKind.NotFound, $"manifest {reference} of {image.Name} is not published in this fake registry");
    }

    public Task<Stream> GetBlobAsync(ImageReference image, Digest digest, RegistryCredentials? credentials, CancellationToken ct)
    {
        BlobRequests.AddOrUpdate(digest, 1, (_, n) => n + 1);
        return _blobs.TryGetValue(digest, out var bytes)
            ? Task.FromResult<Stream>(new MemoryStream(bytes, writable: false))
            : throw new CrestException(ErrorKind.NotFound, $"blob {digest} is not published in this fake registry");
    }

    public Task<bool> BlobExistsAsync(ImageReference image, Digest digest, RegistryCredentials? credentials, CancellationToken ct) =>
        Task.FromResult(_blobs.ContainsKey(digest));

    /// <summary>While set, every push fails as an unreachable registry does.</summary>
    public bool Unreachable { get; set; }

    /// <summary>A pushed manifest by name and tag (or digest), as a later pull reads it.</summary>
    public byte[]? Manifest(string name, string reference) => _manifests.TryGetValue((name, reference), out var bytes) ? bytes : null;

    /// <summary>A pushed or published blob.</summary>
    public byte[]? Blob(Digest digest) => _blobs.TryGetValue(digest, out var bytes) ? bytes : null;

    public async Task PushBlobAsync(ImageReference image, Digest digest, long size, Func<Stream> open, RegistryCredentials? credentials, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(open);
        CheckReachable(image);
        await using var source = open();
        using var copy = new MemoryStream();
        await source.CopyToAsync(copy, ct);
        var bytes = copy.ToArray();
        // As a registry does: the upload must match the digest it was announced with.
        if (bytes.Length != size || Digest.Of(bytes) != digest)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"blob upload of {digest} ({size} bytes) got {bytes.Length} bytes of {Digest.Of(bytes)}");
        }

        _blobs[digest] = bytes;
    }

    public Task PushManifestAsync(ImageReference image, string reference, byte[] content, string mediaType, RegistryCredentials? credentials, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(image);
        CheckReachable(image);
        _manifests[(image.Name, reference)] = content;
        _manifests[(image.Name, Digest.Of(content).ToString())] = content;
        return Task.CompletedTask;
    }

    private void CheckReachable(ImageReference image)
    {
        if (Unreachable)
        {
            throw new CrestException(ErrorKind.Unavailable, $"registry {image.Registry} is unreachable (connection refused)");
        }
    }
}
