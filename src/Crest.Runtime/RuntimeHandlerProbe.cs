using Crest.Core;
using Crest.Linux;

namespace Crest.Runtime;

/// <summary>Finds each configured OCI runtime and asks it for its version (<c>runc --version</c>, <c>crun --version</c>).</summary>
public sealed class RuntimeHandlerProbe(ICommandRunner commands)
{
    private static readonly TimeSpan VersionTimeout = TimeSpan.FromSeconds(5);

    // The kubelet calls Status every few seconds: a good answer is kept until the binary changes.
    private readonly System.Collections.Concurrent.ConcurrentDictionary<(string Name, string Path, DateTime Modified), RuntimeHandlerStatus> _answers = new();

    public async Task<RuntimeHandlerStatus> ProbeAsync(RuntimeHandlerOptions handler, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(handler);
        var resolved = ExecutableSearch.Resolve(handler.Path);
        if (resolved is null)
        {
            return new RuntimeHandlerStatus(handler.Name, handler.Path, null,
                $"runtime handler '{handler.Name}': binary '{handler.Path}' was not found; install it (make deps) or fix [runtime.handlers.{handler.Name}] path");
        }

        var key = (handler.Name, resolved, File.GetLastWriteTimeUtc(resolved));
        if (_answers.TryGetValue(key, out var known))
        {
            return known;
        }

        var status = await AskAsync(handler, resolved, ct).ConfigureAwait(false);
        if (status.Version is not null)
        {
            _answers[key] = status;
        }

        return status;
    }

    private async Task<RuntimeHandlerStatus> AskAsync(RuntimeHandlerOptions handler, string resolved, CancellationToken ct)
    {

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(VersionTimeout);
        try
        {
            var result = await commands.RunAsync(new CommandLine(resolved, ["--version"]), timeout.Token).ConfigureAwait(false);
            if (result.ExitCode != 0)
            {
                return new RuntimeHandlerStatus(handler.Name, resolved, null,
                    $"runtime handler '{handler.Name}': '{resolved} --version' exited {result.ExitCode}: {result.StandardError.Trim()}");
            }

            var version = ParseVersion(result.StandardOutput);
            if (Path.GetFileName(resolved) == "crun" && CgroupLayout.HybridV2Controllers() is { Count: > 0 } controllers)
            {
                return new RuntimeHandlerStatus(handler.Name, resolved, version,
                    $"runtime handler '{handler.Name}': crun refuses this host's hybrid cgroups (cgroup v1 plus a v2 hierarchy with the {string.Join(", ", controllers)} controller); use runc here, or run on a pure cgroup v1 or v2 host");
            }

            return new RuntimeHandlerStatus(handler.Name, resolved, version, null);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return new RuntimeHandlerStatus(handler.Name, resolved, null,
                $"runtime handler '{handler.Name}': '{resolved} --version' did not answer within {VersionTimeout.TotalSeconds:0} s");
        }
        catch (CrestException e)
        {
            return new RuntimeHandlerStatus(handler.Name, resolved, null, $"runtime handler '{handler.Name}': {e.Message}");
        }
    }

    /// <summary>"runc version 1.3.6+ds1" / "crun version 1.8.1" -> the version word of the first line.</summary>
    internal static string ParseVersion(string output)
    {
        var first = output.Split('\n', 2)[0].Trim();
        var words = first.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        var at = Array.IndexOf(words, "version");
        return at >= 0 && at + 1 < words.Length ? words[at + 1] : first;
    }
}
