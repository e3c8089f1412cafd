using Crest.Api.V1;
using Grpc.Core;

namespace Crest.Daemon.Cri;

internal sealed partial class CrestMigrationService
{
    /// <summary>A container's CRI log timestamps (last line; first line after a moment), in Unix nanoseconds, 0 for none.</summary>
    public override async Task<LogTimesResponse> LogTimes(LogTimesRequest request, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        DateTimeOffset? after = request.AfterUnixNanos > 0 ? DateTimeOffset.UnixEpoch.AddTicks(request.AfterUnixNanos / 100) : null;
        var times = await migrations.LogTimesAsync(request.ContainerId, after, context.CancellationToken);
        return new LogTimesResponse { LastLineUnixNanos = UnixNanos(times.LastLine), FirstLineAfterUnixNanos = UnixNanos(times.FirstLineAfter) };
    }
}
