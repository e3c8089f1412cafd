namespace Crest.Images;

/// <summary>Many pulls at once (shared), or one garbage collection alone (exclusive), so GC never deletes a blob a pull has fetched but not yet recorded.</summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Reliability", "CA1001", Justification = "SemaphoreSlim holds no kernel handle unless AvailableWaitHandle is used; the lock lives as long as the daemon.")]
internal sealed class AsyncReaderWriterLock
{
    private readonly SemaphoreSlim _writer = new(1, 1);
    private readonly SemaphoreSlim _readersGate = new(1, 1);
    private int _readers;

    public async Task<IDisposable> ReadAsync(CancellationToken ct)
    {
        await _readersGate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (++_readers == 1)
            {
                try
                {
                    await _writer.WaitAsync(ct).ConfigureAwait(false);
                }
                catch
                {
                    _readers--;
                    throw;
                }
            }
        }
        finally
        {
            _readersGate.Release();
        }

        return new Releaser(() =>
        {
            _readersGate.Wait();
            try
            {
                if (--_readers == 0)
                {
                    _writer.Release();
                }
            }
            finally
            {
                _readersGate.Release();
            }
        });
    }

    public async Task<IDisposable> WriteAsync(CancellationToken ct)
    {
        await _writer.WaitAsync(ct).ConfigureAwait(false);
        return new Releaser(() => _writer.Release());
    }

    private sealed class Releaser(Action release) : IDisposable
    {
        private Action? _release = release;

        public void Dispose() => Interlocked.Exchange(ref _release, null)?.Invoke();
    }
}
