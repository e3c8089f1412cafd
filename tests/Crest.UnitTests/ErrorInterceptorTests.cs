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

    private sealed class RecordingStream : IServerStreamWriter<string>
    {
        public List<string> Written { get; } = [];

        public WriteOptions? WriteOptions { get; set; }

        public Task WriteAsync(string message)
        {
            Written.Add(message);
            return Task.CompletedTask;
        }
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

    [Theory]
    [InlineData(ErrorKind.InvalidArgument, StatusCode.InvalidArgument)]
    [InlineData(ErrorKind.NotFound, StatusCode.NotFound)]
    [InlineData(ErrorKind.FailedPrecondition, StatusCode.FailedPrecondition)]
    [InlineData(ErrorKind.PermissionDenied, StatusCode.PermissionDenied)]
    [InlineData(ErrorKind.Unavailable, StatusCode.Unavailable)]
    [InlineData(ErrorKind.Internal, StatusCode.Internal)]
    public async Task A_stream_that_fails_with_a_domain_error_ends_with_the_status_a_unary_call_would_return(ErrorKind kind, StatusCode code)
    {
        var interceptor = new ErrorInterceptor(NullLogger<ErrorInterceptor>.Instance);
        var stream = new RecordingStream();

        var e = await Assert.ThrowsAsync<RpcException>(() => interceptor.ServerStreamingServerHandler<string, string>(
            "request", stream, new FakeContext(DateTime.MaxValue, CancellationToken.None),
            async (_, s, _) =>
            {
                await s.WriteAsync("layer 1 of 2");
                throw new CrestException(kind, "pull of registry.local/app:1 failed: the registry answered 404");
            }));

        Assert.Equal(code, e.StatusCode);
        Assert.Equal("pull of registry.local/app:1 failed: the registry answered 404", e.Status.Detail);
        Assert.Equal(["layer 1 of 2"], stream.Written);
    }

    [Fact]
    public async Task A_client_stream_that_fails_with_a_domain_error_ends_with_its_status()
    {
        var interceptor = new ErrorInterceptor(NullLogger<ErrorInterceptor>.Instance);

        var e = await Assert.ThrowsAsync<RpcException>(() => interceptor.ClientStreamingServerHandler<string, string>(
            null!, new FakeContext(DateTime.MaxValue, CancellationToken.None),
            (_, _) => throw new CrestException(ErrorKind.ResourceExhausted, "a migration archive sent to this node passed 10 bytes")));

        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Equal("a migration archive sent to this node passed 10 bytes", e.Status.Detail);
    }

    [Fact]
    public async Task A_stream_that_fails_unexpectedly_ends_internal_with_the_method_named()
    {
        var interceptor = new ErrorInterceptor(NullLogger<ErrorInterceptor>.Instance);

        var e = await Assert.ThrowsAsync<RpcException>(() => interceptor.ServerStreamingServerHandler<string, string>(
            "request", new RecordingStream(), new FakeContext(DateTime.MaxValue, CancellationToken.None),
            (_, _, _) => throw new InvalidOperationException("bad state")));

        Assert.Equal(StatusCode.Internal, e.StatusCode);
        Assert.Contains("/runtime.v1.RuntimeService/Test: bad state", e.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_stream_the_client_leaves_reports_cancelled()
    {
        var interceptor = new ErrorInterceptor(NullLogger<ErrorInterceptor>.Instance);
        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();

        var e = await Assert.ThrowsAsync<RpcException>(() => interceptor.ServerStreamingServerHandler<string, string>(
            "request", new RecordingStream(), new FakeContext(DateTime.MaxValue, cts.Token), (_, _, _) => throw new OperationCanceledException(cts.Token)));

        Assert.Equal(StatusCode.Cancelled, e.StatusCode);
    }

    [Fact]
    public async Task A_stream_that_ends_normally_keeps_every_message()
    {
        var interceptor = new ErrorInterceptor(NullLogger<ErrorInterceptor>.Instance);
        var stream = new RecordingStream();

        await interceptor.ServerStreamingServerHandler<string, string>(
            "request", stream, new FakeContext(DateTime.MaxValue, CancellationToken.None),
            async (_, s, _) =>
            {
                await s.WriteAsync("created");
                await s.WriteAsync("started");
            });

        Assert.Equal(["created", "started"], stream.Written);
    }

    [Fact]
    public async Task A_status_chosen_by_an_adapter_passes_through_unchanged()
    {
        var interceptor = new ErrorInterceptor(NullLogger<ErrorInterceptor>.Instance);

        var e = await Assert.ThrowsAsync<RpcException>(() => interceptor.ServerStreamingServerHandler<string, string>(
            "request", new RecordingStream(), new FakeContext(DateTime.MaxValue, CancellationToken.None),
            (_, _, _) => throw new RpcException(new Status(StatusCode.Unknown, "container is in CONTAINER_EXITED state"))));

        Assert.Equal(StatusCode.Unknown, e.StatusCode);
        Assert.Equal("container is in CONTAINER_EXITED state", e.Status.Detail);
    }
}
