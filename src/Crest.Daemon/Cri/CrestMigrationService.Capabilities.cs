using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>Which migration strategies this node supports; an unsupported one carries the reason (kernel feature, or not built).</summary>
    public override async Task<MigrationCapabilitiesResponse> Capabilities(MigrationCapabilitiesRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var response = new MigrationCapabilitiesResponse();
        response.Strategies.Add((await migrations.CapabilitiesAsync(context.CancellationToken))
            .Select(s => new StrategySupport { Strategy = s.Strategy, Supported = s.Supported, Reason = s.Reason ?? "" }));
        return response;
    }
}
