namespace Crest.TestKit;

/// <summary>A private temporary directory, removed on dispose. Short paths: unix socket paths must stay under 108 bytes.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir(string prefix = "crest-test")
    {
        Path = Directory.CreateTempSubdirectory(prefix + "-").FullName;
    }

    public string Path { get; }

    public string Combine(params string[] parts) => System.IO.Path.Combine([Path, .. parts]);

    public string CreateDirectory(params string[] parts) => Directory.CreateDirectory(Combine(parts)).FullName;

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
