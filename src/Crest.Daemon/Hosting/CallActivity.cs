using Grpc.Core;
using Grpc.Core.Interceptors;

namespace Crest.Daemon.Hosting;

/// <summary>Counts the CRI calls in flight and those made so far, for work that should wait until crestd is quiet (<see cref="MemoryTrimmer"/>).</summary>
internal sealed class CallActivity : Interceptor
{
    private long _inFlight;
    private long _started;

    public long InFlight => Interlocked.Read(ref _inFlight);

    /// <summary>Calls started since crestd started.</summary>
    public long Started => Interlocked.Read(ref _started);

    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(
        TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        Enter();
        try
        {
            return await continuation(request, context);
        }
        finally
        {
            Interlocked.Decrement(ref _inFlight);
        }
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(
        TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        // A long stream (GetContainerEvents) is not a burst of work: it is counted as a call, not as one in flight.
        Interlocked.Increment(ref _started);
        await continuation(request, responseStream, context);
    }

    private void Enter()
    {
        Interlocked.Increment(ref _started);
        Interlocked.Increment(ref _inFlight);
    }
}
