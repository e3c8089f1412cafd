using Crest.Daemon.Cri;
using Google.Protobuf;
using Google.Protobuf.Reflection;
using Grpc.AspNetCore.Server.Model;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;

namespace Crest.UnitTests;

/// <summary>crestd's compiled gRPC bindings serve exactly the RPCs the protos declare, with their kinds and messages.</summary>
public sealed class MethodBindingTests
{
    public static TheoryData<string> Services => ["runtime.v1.RuntimeService", "runtime.v1.ImageService", "crest.v1.CrestImages", "crest.v1.CrestMigration"];

    [Theory]
    [MemberData(nameof(Services))]
    public void Every_rpc_of_a_service_is_bound_once_with_its_kind_and_messages(string service)
    {
        var (descriptor, bound) = service switch
        {
            "runtime.v1.RuntimeService" => (global::Runtime.V1.RuntimeService.Descriptor, Record<CriRuntimeService>(CriRuntimeServiceMethods.Bind)),
            "runtime.v1.ImageService" => (global::Runtime.V1.ImageService.Descriptor, Record<CriImageService>(CriImageServiceMethods.Bind)),
            "crest.v1.CrestImages" => (Crest.Api.V1.CrestImages.Descriptor, Record<CrestImagesService>(CrestImagesServiceMethods.Bind)),
            _ => (Crest.Api.V1.CrestMigration.Descriptor, Record<CrestMigrationService>(CrestMigrationServiceMethods.Bind)),
        };

        Assert.Equal(descriptor.Methods.Select(Expected).Order(), bound.Select(Actual).Order());
        Assert.Equal(service, descriptor.FullName);
    }

    [Fact]
    public void The_reflection_based_provider_is_replaced_not_doubled()
    {
        var services = new ServiceCollection();
        services.AddGrpc();

        MethodBindings.Use(services);

        Assert.DoesNotContain(services, d => d.ServiceType == typeof(IServiceMethodProvider<>) && d.ImplementationType?.Name == "BinderServiceMethodProvider`1");
        Assert.Single(services, d => d.ServiceType == typeof(IServiceMethodProvider<CriRuntimeService>));
        Assert.Single(services, d => d.ServiceType == typeof(IServiceMethodProvider<CrestMigrationService>));
        // Twice would bind every method twice; a gRPC package without the provider fails crestd's start, not its calls.
        Assert.Throws<InvalidOperationException>(() => MethodBindings.Use(services));
    }

    [Fact]
    public async Task A_host_with_the_bindings_maps_every_method_once_and_a_second_binder_fails_its_start()
    {
        await using var app = Host(addGrpcAgain: false);
        MapAll(app);

        MethodBindings.Verify(app);
        var routes = ((IEndpointRouteBuilder)app).DataSources.SelectMany(d => d.Endpoints).OfType<RouteEndpoint>()
            .Where(e => e.Metadata.GetMetadata<Grpc.AspNetCore.Server.GrpcMethodMetadata>() is not null).ToList();
        Assert.Contains(routes, e => e.RoutePattern.RawText == "/runtime.v1.RuntimeService/Version"
            && e.Metadata.GetMetadata<Microsoft.AspNetCore.Routing.HttpMethodMetadata>()?.HttpMethods.SequenceEqual(["POST"]) == true);

        // AddGrpc called again after the swap brings Grpc.AspNetCore's binder back: every route twice.
        await using var doubled = Host(addGrpcAgain: true);
        MapAll(doubled);
        var e = Assert.Throws<InvalidOperationException>(() => MethodBindings.Verify(doubled));
        Assert.Contains("is bound 2 times", e.Message, StringComparison.Ordinal);
    }

    private static WebApplication Host(bool addGrpcAgain)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Services.AddGrpc();
        MethodBindings.Use(builder.Services);
        if (addGrpcAgain)
        {
            builder.Services.AddGrpc();
        }

        return builder.Build();
    }

    private static void MapAll(WebApplication app)
    {
        app.MapGrpcService<CriRuntimeService>();
        app.MapGrpcService<CriImageService>();
        app.MapGrpcService<CrestImagesService>();
        app.MapGrpcService<CrestMigrationService>();
    }

    [Fact]
    public void A_message_survives_the_marshaller_both_ways()
    {
        var marshaller = MethodBindings.Marshaller(global::Runtime.V1.VersionResponse.Parser);
        var message = new global::Runtime.V1.VersionResponse { Version = "0.1.0", RuntimeName = "crest", RuntimeApiVersion = "v1" };
        var written = new Written();

        marshaller.ContextualSerializer(message, written);

        Assert.True(written.Completed);
        Assert.Equal(message.CalculateSize(), written.Declared);
        Assert.Equal(message.ToByteArray(), written.Buffer.WrittenSpan.ToArray());
        Assert.Equal(message, marshaller.ContextualDeserializer(new Received(written.Buffer.WrittenMemory)));
    }

    private sealed class Written : SerializationContext
    {
        public System.Buffers.ArrayBufferWriter<byte> Buffer { get; } = new();

        public int? Declared { get; private set; }

        public bool Completed { get; private set; }

        public override void SetPayloadLength(int payloadLength) => Declared = payloadLength;

        public override System.Buffers.IBufferWriter<byte> GetBufferWriter() => Buffer;

        public override void Complete() => Completed = true;

        public override void Complete(byte[] payload) => throw new InvalidOperationException("the buffer writer is to be used");
    }

    private sealed class Received(ReadOnlyMemory<byte> payload) : DeserializationContext
    {
        public override int PayloadLength => payload.Length;

        public override byte[] PayloadAsNewBuffer() => payload.ToArray();

        public override System.Buffers.ReadOnlySequence<byte> PayloadAsReadOnlySequence() => new(payload);
    }

    private static List<IMethod> Record<TService>(Action<MethodSink<TService>> bind)
        where TService : class
    {
        var recorded = new List<IMethod>();
        bind(new MethodSink<TService>(recorded));
        return recorded;
    }

    private static string Expected(MethodDescriptor m) =>
        $"{m.Service.FullName}/{m.Name} {Kind(m.IsClientStreaming, m.IsServerStreaming)} {m.InputType.ClrType.FullName} -> {m.OutputType.ClrType.FullName}";

    private static string Actual(IMethod m)
    {
        var types = m.GetType().GetGenericArguments();
        return $"{m.FullName.TrimStart('/')} {m.Type} {types[0].FullName} -> {types[1].FullName}";
    }

    private static MethodType Kind(bool clientStreams, bool serverStreams) => (clientStreams, serverStreams) switch
    {
        (false, false) => MethodType.Unary,
        (false, true) => MethodType.ServerStreaming,
        (true, false) => MethodType.ClientStreaming,
        _ => MethodType.DuplexStreaming,
    };
}
