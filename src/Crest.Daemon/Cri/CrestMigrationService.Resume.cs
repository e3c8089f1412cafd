using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>Resumes a frozen migration source. Idempotent: a container that is not frozen is left as it is.</summary>
    public override async Task<ResumeResponse> Resume(ResumeRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        await migrations.ResumeAsync(request.ContainerId, context.CancellationToken);
        return new ResumeResponse();
    }
}
