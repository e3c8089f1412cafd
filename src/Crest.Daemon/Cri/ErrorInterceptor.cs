using Crest.Core;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.Extensions.Logging;

namespace Crest.Daemon.Cri;

/// <summary>The one place where domain failures become gRPC status codes.</summary>
internal sealed class ErrorInterceptor(ILogger<ErrorInterceptor> logger) : Interceptor
{
    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(
        TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        ArgumentNullException.ThrowIfNull(context);
        try
        {
            return await continuation(request, context);
        }
        catch (CrestException e)
        {
            DaemonLog.RpcFailed(logger, context.Method, e.Kind, e.Message);
            throw new RpcException(new Status(ToStatusCode(e.Kind), e.Message));
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
        _ => StatusCode.Internal,
    };
}
