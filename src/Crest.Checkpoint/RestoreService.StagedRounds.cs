using Crest.Checkpoint.Format;
using Crest.Core;

namespace Crest.Checkpoint;

// A migration target's restore of a frozen delta: the rootfs rounds staged before the freeze come with it.
public sealed partial class RestoreService
{
    /// <summary>
    /// A migration's frozen checkpoint carries only the rootfs changes since the rounds staged here before its freeze: the
    /// request must name that staging, which is checked against the rounds the checkpoint names and moved into the
    /// restore's directory (StartContainer applies the rounds, then the delta). A complete checkpoint takes no staging.
    /// Returns the request's annotations without the staging's, which never reaches the container.
    /// </summary>
    private IReadOnlyDictionary<string, string> ClaimStagedRounds(RestorePlan plan, IReadOnlyDictionary<string, string> annotations, string staging)
    {
        var stagingToken = annotations.GetValueOrDefault(RestorePlan.RootfsStagingAnnotation);
        if (plan.StagedRootfsRounds is not { } rounds)
        {
            if (stagingToken is not null)
            {
                throw new CrestException(ErrorKind.InvalidArgument,
                    $"CreateContainer names rootfs staging {stagingToken} (annotation {RestorePlan.RootfsStagingAnnotation}), but checkpoint {plan.Source} is complete, not a delta on staged rounds; drop the annotation");
            }

            return annotations;
        }

        if (stagingToken is null)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"checkpoint {plan.Source} holds only the rootfs changes since {rounds.Count} rounds staged before its freeze ({CheckpointFiles.RootfsRounds}), but CreateContainer names no staging "
                + $"(annotation {RestorePlan.RootfsStagingAnnotation}); it can be restored only by the migration that staged them (crest migrate)");
        }

        rootfsStaging.Claim(stagingToken, rounds, Path.Combine(staging, CheckpointFiles.StagedRootfsRounds), plan.Source);
        return annotations.Where(kv => kv.Key != RestorePlan.RootfsStagingAnnotation).ToDictionary(StringComparer.Ordinal);
    }
}
