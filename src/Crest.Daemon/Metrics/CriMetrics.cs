using System.Diagnostics;
using System.Diagnostics.Metrics;
using Grpc.Core;
using Grpc.Core.Interceptors;

namespace Crest.Daemon.Metrics;

/// <summary>
/// Every CRI call counted by method and final status code, with its latency (meter "Crest.Cri"). It wraps the error
/// interceptor, so the code is the one the client receives.
/// </summary>
internal sealed class CriMetricsInterceptor : Interceptor
{
    private static readonly Meter Meter = new("Crest.Cri");
    private static readonly Counter<long> Requests = Meter.CreateCounter<long>("crest_cri_requests_total", null, "CRI calls by method and gRPC status code");
    private static readonly Histogram<double> Duration = Meter.CreateHistogram<double>("crest_cri_request_duration_seconds", "s", "Time of CRI calls by method (streams: until the stream ends)");

    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(
        TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        ArgumentNullException.ThrowIfNull(context);
        TResponse response = default!;
        await MeasureAsync(context.Method, async () => response = await continuation(request, context));
        return response;
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(
        TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        ArgumentNullException.ThrowIfNull(context);
        await MeasureAsync(context.Method, () => continuation(request, responseStream, context));
    }

    private static async Task MeasureAsync(string method, Func<Task> call)
    {
        var clock = Stopwatch.StartNew();
        var code = StatusCode.OK;
        try
        {
            await call();
        }
        catch (RpcException e)
        {
            code = e.StatusCode;
            throw;
        }
        catch (Exception)
        {
            code = StatusCode.Unknown;
            throw;
        }
        finally
        {
            Record(method, code, clock.Elapsed);
        }
    }

    private static void Record(string method, StatusCode code, TimeSpan elapsed)
    {
        // "/runtime.v1.RuntimeService/CreateContainer" -> "CreateContainer": the RPC names are unique across the CRI services.
        var name = method[(method.LastIndexOf('/') + 1)..];
        Requests.Add(1, new KeyValuePair<string, object?>("method", name), new KeyValuePair<string, object?>("code", code.ToString()));
        Duration.Record(elapsed.TotalSeconds, new KeyValuePair<string, object?>("method", name));
    }
}
