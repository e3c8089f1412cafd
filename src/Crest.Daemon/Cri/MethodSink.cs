using System.Diagnostics.CodeAnalysis;
using Google.Protobuf;
using Grpc.AspNetCore.Server.Model;
using Grpc.Core;

namespace Crest.Daemon.Cri;

/// <summary>
/// Where a service's RPCs are bound: Grpc.AspNetCore's discovery context, or a list a test reads. Sealed, with
/// non-virtual generic methods, so every call site's instantiation is compiled ahead of time.
/// </summary>
internal sealed class MethodSink<[DynamicallyAccessedMembers(MethodBindings.ServiceMembers)] TService>
    where TService : class
{
    private readonly ServiceMethodProviderContext<TService>? _context;
    private readonly List<IMethod>? _recorded;

    public MethodSink(ServiceMethodProviderContext<TService> context) => _context = context;

    /// <summary>A sink that records the methods instead of binding them.</summary>
    public MethodSink(List<IMethod> recorded) => _recorded = recorded;

    public void Unary<TRequest, TResponse>(string service, string name, MessageParser<TRequest> request, MessageParser<TResponse> response,
        UnaryServerMethod<TService, TRequest, TResponse> invoker)
        where TRequest : class, IMessage<TRequest>
        where TResponse : class, IMessage<TResponse>
    {
        var method = Method(MethodType.Unary, service, name, request, response);
        _recorded?.Add(method);
        _context?.AddUnaryMethod(method, MethodBindings.Metadata, invoker);
    }

    public void ServerStreaming<TRequest, TResponse>(string service, string name, MessageParser<TRequest> request, MessageParser<TResponse> response,
        ServerStreamingServerMethod<TService, TRequest, TResponse> invoker)
        where TRequest : class, IMessage<TRequest>
        where TResponse : class, IMessage<TResponse>
    {
        var method = Method(MethodType.ServerStreaming, service, name, request, response);
        _recorded?.Add(method);
        _context?.AddServerStreamingMethod(method, MethodBindings.Metadata, invoker);
    }

    public void ClientStreaming<TRequest, TResponse>(string service, string name, MessageParser<TRequest> request, MessageParser<TResponse> response,
        ClientStreamingServerMethod<TService, TRequest, TResponse> invoker)
        where TRequest : class, IMessage<TRequest>
        where TResponse : class, IMessage<TResponse>
    {
        var method = Method(MethodType.ClientStreaming, service, name, request, response);
        _recorded?.Add(method);
        _context?.AddClientStreamingMethod(method, MethodBindings.Metadata, invoker);
    }

    private static Method<TRequest, TResponse> Method<TRequest, TResponse>(MethodType type, string service, string name,
        MessageParser<TRequest> request, MessageParser<TResponse> response)
        where TRequest : class, IMessage<TRequest>
        where TResponse : class, IMessage<TResponse> =>
        new(type, service, name, MethodBindings.Marshaller(request), MethodBindings.Marshaller(response));
}
