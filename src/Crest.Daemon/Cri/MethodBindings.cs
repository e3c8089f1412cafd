using System.Diagnostics.CodeAnalysis;
using Google.Protobuf;
using Grpc.AspNetCore.Server.Model;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;

namespace Crest.Daemon.Cri;

/// <summary>
/// Binds the gRPC methods of crestd's four services with their request and response types written out, in place of
/// Grpc.AspNetCore's own binding. That one calls each service's generated <c>BindService</c> through reflection, and
/// <c>BindService</c> adds each RPC through a generic virtual method, which a Native AOT build resolves and instantiates
/// at run time: perf put 34 % of crestd's start (about 45 ms on a 2-core node) there. Here each RPC is one call of a
/// generic method whose type arguments the compiler sees, so nothing is built at run time. The methods and their
/// handlers are the same: the name, the kind of call, the protobuf messages, and the service's override (or the
/// generated base's Unimplemented answer).
/// </summary>
internal static class MethodBindings
{
    /// <summary>What Grpc.AspNetCore asks to keep of a service type (it activates the service and reads its attributes).</summary>
    internal const DynamicallyAccessedMemberTypes ServiceMembers =
        DynamicallyAccessedMemberTypes.PublicConstructors | DynamicallyAccessedMemberTypes.PublicMethods | DynamicallyAccessedMemberTypes.NonPublicMethods;

    /// <summary>Swaps Grpc.AspNetCore's reflection-based method provider for the ones below; called after AddGrpc.</summary>
    public static void Use(IServiceCollection services)
    {
        var reflective = services.Where(d => d.ServiceType == typeof(IServiceMethodProvider<>)
            && d.ImplementationType is { IsGenericTypeDefinition: true, Name: "BinderServiceMethodProvider`1" }).ToList();
        if (reflective.Count != 1)
        {
            // Left in place, it would bind every method a second time: two endpoints per route, and every call ambiguous.
            throw new InvalidOperationException(
                $"Grpc.AspNetCore's reflection-based method provider was expected once among the services AddGrpc registered, found {reflective.Count}; the gRPC package changed how it binds services");
        }

        services.Remove(reflective[0]);
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IServiceMethodProvider<CriRuntimeService>, Provider<CriRuntimeService>>(
            _ => new Provider<CriRuntimeService>(CriRuntimeServiceMethods.Bind)));
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IServiceMethodProvider<CriImageService>, Provider<CriImageService>>(
            _ => new Provider<CriImageService>(CriImageServiceMethods.Bind)));
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IServiceMethodProvider<CrestImagesService>, Provider<CrestImagesService>>(
            _ => new Provider<CrestImagesService>(CrestImagesServiceMethods.Bind)));
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IServiceMethodProvider<CrestMigrationService>, Provider<CrestMigrationService>>(
            _ => new Provider<CrestMigrationService>(CrestMigrationServiceMethods.Bind)));
    }

    private sealed class Provider<[DynamicallyAccessedMembers(ServiceMembers)] TService>(Action<MethodSink<TService>> bind) : IServiceMethodProvider<TService>
        where TService : class
    {
        public void OnServiceMethodDiscovery(ServiceMethodProviderContext<TService> context) => bind(new MethodSink<TService>(context));
    }

    /// <summary>A protobuf marshaller writing straight into gRPC's buffer and parsing from its payload sequence.</summary>
    internal static Marshaller<T> Marshaller<T>(MessageParser<T> parser)
        where T : IMessage<T> =>
        Marshallers.Create<T>(
            (message, context) =>
            {
                context.SetPayloadLength(message.CalculateSize());
                message.WriteTo(context.GetBufferWriter());
                context.Complete();
            },
            context => parser.ParseFrom(context.PayloadAsReadOnlySequence()));
}

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
        _context?.AddUnaryMethod(method, [], invoker);
    }

    public void ServerStreaming<TRequest, TResponse>(string service, string name, MessageParser<TRequest> request, MessageParser<TResponse> response,
        ServerStreamingServerMethod<TService, TRequest, TResponse> invoker)
        where TRequest : class, IMessage<TRequest>
        where TResponse : class, IMessage<TResponse>
    {
        var method = Method(MethodType.ServerStreaming, service, name, request, response);
        _recorded?.Add(method);
        _context?.AddServerStreamingMethod(method, [], invoker);
    }

    public void ClientStreaming<TRequest, TResponse>(string service, string name, MessageParser<TRequest> request, MessageParser<TResponse> response,
        ClientStreamingServerMethod<TService, TRequest, TResponse> invoker)
        where TRequest : class, IMessage<TRequest>
        where TResponse : class, IMessage<TResponse>
    {
        var method = Method(MethodType.ClientStreaming, service, name, request, response);
        _recorded?.Add(method);
        _context?.AddClientStreamingMethod(method, [], invoker);
    }

    private static Method<TRequest, TResponse> Method<TRequest, TResponse>(MethodType type, string service, string name,
        MessageParser<TRequest> request, MessageParser<TResponse> response)
        where TRequest : class, IMessage<TRequest>
        where TResponse : class, IMessage<TResponse> =>
        new(type, service, name, MethodBindings.Marshaller(request), MethodBindings.Marshaller(response));
}
