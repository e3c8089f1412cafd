namespace Crest.Checkpoint;

/// <summary>Chunks a migration peer sends, written into a new private file under a byte cap.</summary>
internal static class ReceivedFile
{
    /// <summary>
    /// Writes <paramref name="chunks"/> into a new 0600 file at <paramref name="path"/> (never through an existing name)
    /// and returns the bytes written; past <paramref name="cap"/> bytes <paramref name="tooLarge"/> is thrown.
    /// <paramref name="written"/> sees each chunk once it is written, with the bytes so far. The caller removes the file on failure.
    /// </summary>
    public static async Task<long> WriteAsync(string path, IAsyncEnumerable<ReadOnlyMemory<byte>> chunks, long cap, Func<Exception> tooLarge,
        Action<ReadOnlyMemory<byte>, long>? written, CancellationToken ct)
    {
        long bytes = 0;
        await using var file = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
            BufferSize = 1 << 20,
            Options = FileOptions.Asynchronous,
        });
        await foreach (var chunk in chunks.WithCancellation(ct).ConfigureAwait(false))
        {
            bytes += chunk.Length;
            if (bytes > cap)
            {
                throw tooLarge();
            }

            await file.WriteAsync(chunk, ct).ConfigureAwait(false);
            written?.Invoke(chunk, bytes);
        }

        return bytes;
    }
}
