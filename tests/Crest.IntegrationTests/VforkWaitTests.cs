using System.Diagnostics;
using System.Globalization;
using Crest.Linux;
using Crest.TestKit;

namespace Crest.IntegrationTests;

/// <summary>
/// <see cref="VforkWaits"/> on real processes: a parent waiting for its vfork child is found, frozen or not, and a task
/// the freezer holds in an ordinary sleep (which the v1 freezer also shows as state D) is not taken for one.
/// </summary>
public sealed class VforkWaitTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_parent_waiting_for_its_vfork_child_is_found_and_a_frozen_sleeper_is_not()
    {
        Requires.Root();
        using var dir = new TempDir("crest-it-vfork");
        // The child sleeps a minute before its exec: its parent waits in vfork all that time.
        var binary = await VforkWorkload.BuildAsync(dir.Path, Ct);
        // Both start in the cgroup, as a container's processes do (a task moved into a v1 freezer cgroup while it waits
        // in vfork can keep the freeze from ever finishing).
        var freezer = Freezer.Create("crest-it-vfork-" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture));
        using var parent = freezer.Start(binary, "60000 0");
        using var sleeper = freezer.Start("sleep", "100");
        try
        {
            var child = await Eventually.UntilAsync(() => Task.FromResult(Children(parent.Id)), c => c.Count == 1, "the vfork child to exist", ct: Ct);
            await Eventually.UntilAsync(() => Task.FromResult(VforkWaits.Of([parent.Id, child[0], sleeper.Id])), w => w.Count > 0,
                "the parent to wait in vfork", describe: w => string.Join(", ", w), ct: Ct);
            Assert.Equal([parent.Id], VforkWaits.Of([parent.Id, child[0], sleeper.Id]));

            // Frozen by the cgroup freezer, as runc pause does: the wait is still told apart from the freezer's own.
            freezer.Freeze();
            await Eventually.UntilAsync(freezer.Frozen, "the cgroup to be frozen", ct: Ct);
            Assert.Equal([parent.Id], VforkWaits.Of([parent.Id, child[0], sleeper.Id]));
        }
        finally
        {
            freezer.Thaw();
            foreach (var p in new[] { parent, sleeper })
            {
                p.Kill(entireProcessTree: true);
                await p.WaitForExitAsync(CancellationToken.None);
            }

            freezer.Remove();
        }
    }

    [Fact]
    public void The_kernels_names_of_a_vfork_wait_are_known_and_others_are_not()
    {
        Assert.True(VforkWaits.IsVforkWait("kernel_clone"));
        Assert.True(VforkWaits.IsVforkWait("wait_for_vfork_done\n"));
        Assert.True(VforkWaits.IsVforkWait("_do_fork"));
        Assert.False(VforkWaits.IsVforkWait("__refrigerator"));
        Assert.False(VforkWaits.IsVforkWait("do_freezer_trap"));
        Assert.False(VforkWaits.IsVforkWait("hrtimer_nanosleep"));
        Assert.False(VforkWaits.IsVforkWait("0"));
    }

    private static List<int> Children(int pid)
    {
        var file = $"/proc/{pid}/task/{pid}/children";
        return File.Exists(file)
            ? [.. File.ReadAllText(file).Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(s => int.Parse(s, CultureInfo.InvariantCulture))]
            : [];
    }

    /// <summary>A cgroup of the freezer controller (v1) or of the unified hierarchy (v2) that the test freezes.</summary>
    private sealed class Freezer(string dir, bool v1)
    {
        public static Freezer Create(string name)
        {
            var v1 = Directory.Exists("/sys/fs/cgroup/freezer");
            var dir = v1 ? Path.Combine("/sys/fs/cgroup/freezer", name) : Path.Combine("/sys/fs/cgroup", name);
            Directory.CreateDirectory(dir);
            return new Freezer(dir, v1);
        }

        /// <summary>Runs <paramref name="program"/> inside this cgroup from its first instruction (a shell moves itself in, then execs it).</summary>
        public Process Start(string program, string args) =>
            Process.Start(new ProcessStartInfo("/bin/sh", ["-c", $"echo $$ > {Path.Combine(dir, "cgroup.procs")} && exec {program} {args}"]) { RedirectStandardOutput = true })!;

        public void Freeze() => File.WriteAllText(Path.Combine(dir, v1 ? "freezer.state" : "cgroup.freeze"), v1 ? "FROZEN" : "1");

        /// <summary>The freeze finished: every task is frozen (v1 freezer.state FROZEN, v2 cgroup.events "frozen 1").</summary>
        public bool Frozen() => v1
            ? File.ReadAllText(Path.Combine(dir, "freezer.state")).Trim() == "FROZEN"
            : File.ReadLines(Path.Combine(dir, "cgroup.events")).Contains("frozen 1", StringComparer.Ordinal);

        public void Thaw() => File.WriteAllText(Path.Combine(dir, v1 ? "freezer.state" : "cgroup.freeze"), v1 ? "THAWED" : "0");

        public void Remove()
        {
            for (var i = 0; i < 50 && Directory.Exists(dir); i++)
            {
                try
                {
                    Directory.Delete(dir);
                }
                catch (IOException)
                {
                    Thread.Sleep(20);
                }
            }
        }
    }
}
