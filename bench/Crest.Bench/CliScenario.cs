using System.Diagnostics;

namespace Crest.Bench;

/// <summary>
/// A CRI client's whole process, as an operator or a script pays it on every command: <c>crest version</c> and
/// <c>crest ps -a</c> against crestd, <c>crictl version</c> and <c>crictl ps -a</c> (cri-tools, from the critest
/// folder) against containerd. One untimed run first, so both start from a warm page cache.
/// </summary>
internal static class CliScenario
{
    public static async Task RunAsync(Report report, string subject, string socket, string? critestDir, int runs)
    {
        var client = subject == "crest"
            ? Subjects.BuiltPath("CrestPath")
            : critestDir is not null && File.Exists(Path.Combine(critestDir, "bin", "crictl")) ? Path.Combine(critestDir, "bin", "crictl") : null;
        if (client is null)
        {
            Console.Error.WriteLine($"bench: {subject}: no crictl (it comes with critest): the CLI rows are skipped");
            return;
        }

        string[] global = subject == "crest" ? ["-r", "unix://" + socket] : ["--config", "/dev/null", "-r", "unix://" + socket];
        foreach (var (row, command) in new[] { ("CLI `version`, whole process", new[] { "version" }), ("CLI `ps -a`, whole process", new[] { "ps", "-a" }) })
        {
            Console.Error.WriteLine($"bench: {subject}: {Path.GetFileName(client)} {string.Join(' ', command)}, {runs} runs");
            report.Target(row, 1.0);
            await RunOnceAsync(client, [.. global, .. command]);
            for (var r = 0; r < runs; r++)
            {
                report.Add(row, "ms", subject, (await RunOnceAsync(client, [.. global, .. command])).TotalMilliseconds);
            }
        }
    }

    private static async Task<TimeSpan> RunOnceAsync(string client, string[] args)
    {
        var start = new ProcessStartInfo(client) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }

        var clock = Stopwatch.StartNew();
        using var p = Process.Start(start)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        var elapsed = clock.Elapsed;
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"{client} {string.Join(' ', args)} exited {p.ExitCode}: {await stderr}{await stdout}");
        }

        return elapsed;
    }
}
