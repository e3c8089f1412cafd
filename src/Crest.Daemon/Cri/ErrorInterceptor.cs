using Crest.Core;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.Extensions.Logging;

namespace Crest.Daemon.Cri;

/// <summary>
/// The one place where domain failures become gRPC status codes, for unary calls, server-streaming ones
/// (GetContainerEvents, PullWithProgress) and client-streaming ones (WriteArchive) alike: a stream that fails after some messages ends with the same status a
/// unary call would have returned.
/// </summary>
internal sealed class ErrorInterceptor(ILogger<ErrorInterceptor> logger) : Interceptor
{
    public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(
        TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        return MapFailuresAsync(() => continuation(request, context), context);
    }

    public override Task ServerStreamingServerHandler<TRequest, TResponse>(
        TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        return MapFailuresAsync(async () =>
        {
            await continuation(request, responseStream, context);
            return true;
        }, context);
    }

    /// <summary>Client streams (crest.v1.CrestMigration WriteArchive) end with the same status a unary call would.</summary>
    public override Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(
        IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        return MapFailuresAsync(() => continuation(requestStream, context), context);
    }

    private async Task<T> MapFailuresAsync<T>(Func<Task<T>> call, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        try
        {
            return await call();
        }
        catch (CrestException e)
        {
            DaemonLog.RpcFailed(logger, context.Method, e.Kind, e.Message);
            // The trailer tells a client that crestd itself answered (UNAVAILABLE from a registry it could not reach is not a node that is down).
            throw new RpcException(new Status(ToStatusCode(e.Kind), e.Message), new Metadata { { ErrorKindTrailer, e.Kind.ToString() } });
        }
        catch (OperationCanceledException) when (context.CancellationToken.IsCancellationRequested)
        {
            var code = context.Deadline <= DateTime.UtcNow ? StatusCode.DeadlineExceeded : StatusCode.Cancelled;
            throw new RpcException(new Status(code, $"{context.Method} did not finish before the caller's deadline or cancellation"));
        }
        catch (Exception e) when (e is not RpcException)
        {
            DaemonLog.UnexpectedRpcError(logger, e, context.Method);
            throw new RpcException(new Status(StatusCode.Internal, $"{context.Method}: {e.Message}"));
        }
    }

    /// <summary>The trailer every failure crestd maps from a domain error carries: the <see cref="ErrorKind"/>'s name.</summary>
    public const string ErrorKindTrailer = "crest-error-kind";

    public static StatusCode ToStatusCode(ErrorKind kind) => kind switch
    {
        ErrorKind.InvalidArgument => StatusCode.InvalidArgument,
        ErrorKind.NotFound => StatusCode.NotFound,
        ErrorKind.AlreadyExists => StatusCode.AlreadyExists,
        ErrorKind.FailedPrecondition => StatusCode.FailedPrecondition,
        ErrorKind.PermissionDenied => StatusCode.PermissionDenied,
        ErrorKind.ResourceExhausted => StatusCode.ResourceExhausted,
        ErrorKind.Unavailable => StatusCode.Unavailable,
        ErrorKind.DeadlineExceeded => StatusCode.DeadlineExceeded,
        ErrorKind.Unimplemented => StatusCode.Unimplemented,
        ErrorKind.DataLoss => StatusCode.DataLoss,
        _ => StatusCode.Internal,
    };
}
