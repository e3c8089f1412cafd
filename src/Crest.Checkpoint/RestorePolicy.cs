using System.Globalization;
using Crest.Core;
using Crest.Oci;

namespace Crest.Checkpoint;

/// <summary>One way a checkpoint would grant more than its restore request allows.</summary>
public sealed record PolicyViolation(uint Pid, uint Tid, string Command, string Check, string Field, string Claimed, string Allowed)
{
    public override string ToString() =>
        $"task {Pid}{(Tid != Pid ? $"/{Tid}" : "")} ({Command}): {Field} is {Claimed} in the checkpoint, but the request allows {Allowed}";
}

/// <summary>
/// A restore never grants more than the request: CRIU puts back the credentials recorded in its images, so the
/// runtime spec does not bind a restored process. Before CRIU runs, every thread's capability sets must be subsets of
/// what the request's security context grants; its uids and gids must be those the request allows; and if the request
/// asks for a seccomp profile, every thread must be under a seccomp filter. Checks named in
/// <c>[restore] relaxed_checks</c> (capabilities, users, seccomp) are reported but not enforced, and logged.
/// </summary>
public static class RestorePolicy
{
    /// <summary>Linux capability numbers (linux/capability.h): SpecBuilder's list is in that order.</summary>
    private static readonly IReadOnlyList<string> CapabilityNames = SpecBuilder.AllCapabilities;

    private static readonly Dictionary<string, int> CapabilityBits =
        CapabilityNames.Select((name, bit) => (name, bit)).ToDictionary(x => x.name, x => x.bit, StringComparer.Ordinal);

    public static readonly IReadOnlyList<string> Checks = ["capabilities", "users", "seccomp"];

    public static ulong Mask(IEnumerable<string> capabilities)
    {
        ArgumentNullException.ThrowIfNull(capabilities);
        ulong mask = 0;
        foreach (var c in capabilities)
        {
            if (CapabilityBits.TryGetValue(c, out var bit))
            {
                mask |= 1UL << bit;
            }
        }

        return mask;
    }

    public static string Names(ulong mask)
    {
        if (mask == 0)
        {
            return "none";
        }

        var names = new List<string>();
        for (var bit = 0; bit < 64; bit++)
        {
            if ((mask & (1UL << bit)) != 0)
            {
                names.Add(bit < CapabilityNames.Count ? CapabilityNames[bit] : $"capability {bit}");
            }
        }

        return string.Join(",", names);
    }

    public static IReadOnlyList<PolicyViolation> Evaluate(IReadOnlyList<CriuThread> threads, SecuritySpec request)
    {
        ArgumentNullException.ThrowIfNull(threads);
        ArgumentNullException.ThrowIfNull(request);
        var allowed = Mask(SpecBuilder.GrantedCapabilities(request));
        var violations = new List<PolicyViolation>();
        foreach (var t in threads)
        {
            void Add(string check, string field, string claimed, string permitted) =>
                violations.Add(new PolicyViolation(t.Pid, t.Tid, t.Command, check, field, claimed, permitted));

            foreach (var (field, value) in new[] { ("effective capabilities", t.Effective), ("permitted capabilities", t.Permitted), ("inheritable capabilities", t.Inheritable), ("bounding capabilities", t.Bounding) })
            {
                if ((value & ~allowed) != 0)
                {
                    Add("capabilities", field, Names(value & ~allowed) + " beyond the grant", Names(allowed));
                }
            }

            var uids = string.Join("/", t.Uids.Select(u => u.ToString(CultureInfo.InvariantCulture)));
            if (request.RunAsUser is { } user && t.Uids.Any(u => u != user))
            {
                Add("users", "uid (real/effective/saved/fs)", uids, $"run_as_user {user}");
            }
            else if (request.RunAsNonRoot && t.Uids.Any(u => u == 0))
            {
                Add("users", "uid (real/effective/saved/fs)", uids, "a non-root user (run_as_non_root)");
            }

            if (request.RunAsGroup is { } group && t.Gids.Any(g => g != group))
            {
                Add("users", "gid (real/effective/saved/fs)", string.Join("/", t.Gids), $"run_as_group {group}");
            }

            if (request.RunAsUser is not null || request.RunAsGroup is not null)
            {
                var permittedGroups = request.SupplementalGroups.Append(request.RunAsGroup ?? t.Gids[0]).ToHashSet();
                var extra = t.Groups.Where(g => !permittedGroups.Contains(g)).ToList();
                if (extra.Count > 0)
                {
                    Add("users", "supplementary groups", string.Join(",", t.Groups), $"groups {string.Join(",", permittedGroups)}");
                }
            }

            if (request.Seccomp != SeccompMode.Unconfined && !request.Privileged && t.Seccomp != "filter")
            {
                Add("seccomp", "seccomp mode", t.Seccomp, $"a seccomp filter ({request.Seccomp} profile requested)");
            }
        }

        return violations;
    }
}
