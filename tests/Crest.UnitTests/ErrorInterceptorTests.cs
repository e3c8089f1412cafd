using Crest.Core;
using Crest.Daemon.Cri;
using Grpc.Core;
using Microsoft.Extensions.Logging.Abstractions;

namespace Crest.UnitTests;

public class ErrorInterceptorTests
{
    private sealed class FakeContext(DateTime deadline, CancellationToken ct) : ServerCallContext
    {
        protected override string MethodCore => "/runtime.v1.RuntimeService/Test";
        protected override string HostCore => "localhost";
        protected override string PeerCore => "unix:";
        protected override DateTime DeadlineCore => deadline;
        protected override Metadata RequestHeadersCore => [];
        protected override CancellationToken CancellationTokenCore => ct;
        protected override Metadata ResponseTrailersCore => [];
        protected override Status StatusCore { get; set; }
        protected override WriteOptions? WriteOptionsCore { get; set; }
        protected override AuthContext AuthContextCore => new(null, []);
        protected override ContextPropagationToken CreatePropagationTokenCore(ContextPropagationOptions? options) => throw new NotSupportedException();
        protected override Task WriteResponseHeadersAsyncCore(Metadata responseHeaders) => Task.CompletedTask;
    }

    [Theory]
    [InlineData(ErrorKind.InvalidArgument, StatusCode.InvalidArgument)]
    [InlineData(ErrorKind.NotFound, StatusCode.NotFound)]
    [InlineData(ErrorKind.AlreadyExists, StatusCode.AlreadyExists)]
    [InlineData(ErrorKind.FailedPrecondition, StatusCode.FailedPrecondition)]
    [InlineData(ErrorKind.PermissionDenied, StatusCode.PermissionDenied)]
    [InlineData(ErrorKind.ResourceExhausted, StatusCode.ResourceExhausted)]
    [InlineData(ErrorKind.Unavailable, StatusCode.Unavailable)]
    [InlineData(ErrorKind.DeadlineExceeded, StatusCode.DeadlineExceeded)]
    [InlineData(ErrorKind.Unimplemented, StatusCode.Unimplemented)]
    [InlineData(ErrorKind.Internal, StatusCode.Internal)]
    public async Task A_domain_error_reaches_the_client_with_its_status_and_message(ErrorKind kind, StatusCode code)
    {
        var interceptor = new ErrorInterceptor(NullLogger<ErrorInterceptor>.Instance);

        var e = await Assert.ThrowsAsync<RpcException>(() => interceptor.UnaryServerHandler<string, string>(
            "request", new FakeContext(DateTime.MaxValue, CancellationToken.None),
            (_, _) => throw new CrestException(kind, "container abc is in state EXITED")));

        Assert.Equal(code, e.StatusCode);
        Assert.Equal("container abc is in state EXITED", e.Status.Detail);
    }

    [Fact]
    public async Task An_unexpected_exception_becomes_internal_with_the_method_named()
    {
        var interceptor = new ErrorInterceptor(NullLogger<ErrorInterceptor>.Instance);

        var e = await Assert.ThrowsAsync<RpcException>(() => interceptor.UnaryServerHandler<string, string>(
            "request", new FakeContext(DateTime.MaxValue, CancellationToken.None), (_, _) => throw new InvalidOperationException("bad state")));

        Assert.Equal(StatusCode.Internal, e.StatusCode);
        Assert.Contains("/runtime.v1.RuntimeService/Test: bad state", e.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Work_cut_short_by_the_callers_deadline_reports_deadline_exceeded()
    {
        var interceptor = new ErrorInterceptor(NullLogger<ErrorInterceptor>.Instance);
        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();

        var e = await Assert.ThrowsAsync<RpcException>(() => interceptor.UnaryServerHandler<string, string>(
            "request", new FakeContext(DateTime.UtcNow.AddSeconds(-1), cts.Token), (_, _) => throw new OperationCanceledException(cts.Token)));

        Assert.Equal(StatusCode.DeadlineExceeded, e.StatusCode);
    }
}
