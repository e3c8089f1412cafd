using System.Reflection;
using Crest.TestKit;
using Xunit.v3;

[assembly: Crest.Tests.LeakCheck]

namespace Crest.Tests;

/// <summary>
/// Fails a test whose cleanup left something behind: a pod that could not be removed, a mount still below its
/// <see cref="TempDir"/>. Cleanup runs in <c>finally</c> and dispose, where throwing would replace the test's own
/// failure; so cleanup reports here, and the report fails the test after it ran, next to any failure of its own.
/// Compiled into each test project that starts real pods (E2E, integration).
/// </summary>
[AttributeUsage(AttributeTargets.Assembly | AttributeTargets.Class | AttributeTargets.Method)]
internal sealed class LeakCheckAttribute : BeforeAfterTestAttribute
{
    private const string Prefix = "cleanup left something behind: ";

    /// <summary>Records a leak against the running test (outside a test: on stderr).</summary>
    public static void Report(string message)
    {
        if (TestContext.Current.Test is null)
        {
            Console.Error.WriteLine(Prefix + message);
            return;
        }

        TestContext.Current.AddWarning(Prefix + message);
    }

    public override void Before(MethodInfo methodUnderTest, IXunitTest test) => TempDir.ReportLeak = Report;

    public override void After(MethodInfo methodUnderTest, IXunitTest test)
    {
        var leaks = TestContext.Current.Warnings?.Where(w => w.StartsWith(Prefix, StringComparison.Ordinal)).ToList() ?? [];
        if (leaks.Count > 0)
        {
            throw new LeakException(string.Join('\n', leaks));
        }
    }
}

/// <summary>What a test's cleanup could not undo.</summary>
internal sealed class LeakException(string message) : Exception(message);
