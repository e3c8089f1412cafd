using System.Diagnostics.CodeAnalysis;
using Google.Protobuf;
using Grpc.AspNetCore.Server;
using Grpc.AspNetCore.Server.Model;
using Grpc.Core;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
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

    /// <summary>
    /// The endpoint metadata of every method, as Grpc.AspNetCore's binder gives it: POST only (another verb is answered
    /// 405), CORS preflight let through. That binder also copies the service's and the method's attributes; crestd's
    /// services carry none (an authorization attribute added to one would need adding here).
    /// </summary>
    internal static IList<object> Metadata { get; } = [new HttpMethodMetadata(["POST"], acceptCorsPreflight: true)];

    /// <summary>
    /// Fails crestd's start unless every service mapped has its methods bound exactly once: no route twice (a binder
    /// registered again by a later AddGrpc would double each) and no service without a method (a service mapped
    /// without a binding here would answer every call Unimplemented).
    /// </summary>
    public static void Verify(IEndpointRouteBuilder endpoints)
    {
        var grpc = endpoints.DataSources.SelectMany(d => d.Endpoints).OfType<RouteEndpoint>()
            .Select(e => (Route: e.RoutePattern.RawText ?? "", Method: e.Metadata.GetMetadata<GrpcMethodMetadata>()))
            .Where(e => e.Method is not null).ToList();
        if (grpc.GroupBy(e => e.Route, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1) is { } twice)
        {
            throw new InvalidOperationException($"gRPC route {twice.Key} is bound {twice.Count()} times; a second method provider binds crestd's services (see MethodBindings)");
        }

        foreach (var service in new[] { typeof(CriRuntimeService), typeof(CriImageService), typeof(CrestImagesService), typeof(CrestMigrationService) })
        {
            // The route with a parameter is the service's catch-all for methods it does not have.
            if (!grpc.Any(e => e.Method!.ServiceType == service && !e.Route.Contains('{', StringComparison.Ordinal)))
            {
                throw new InvalidOperationException($"gRPC service {service.Name} has no method bound; MethodBindings has no provider for it");
            }
        }
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
