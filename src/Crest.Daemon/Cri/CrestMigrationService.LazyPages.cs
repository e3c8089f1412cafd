using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>
    /// A post-copy target's memory transfer: pages fetched so far, or with wait how it ended. present = false for a
    /// container restored without lazy pages; NotFound for an unknown container.
    /// </summary>
    public override async Task<LazyPagesResponse> LazyPages(LazyPagesRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        var state = await migrations.LazyPagesAsync(request.ContainerId, request.Wait, context.CancellationToken);
        return state is null
            ? new LazyPagesResponse()
            : new LazyPagesResponse
            {
                Present = true,
                Finished = state.Finished,
                Succeeded = state.Succeeded,
                Pages = state.Pages,
                TotalPages = state.TotalPages,
                Problem = state.Problem ?? "",
            };
    }
}
