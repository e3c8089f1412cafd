using Crest.Core;
using Crest.Linux;

namespace Crest.Runtime;

/// <summary>Finds each configured OCI runtime and asks it for its version (<c>runc --version</c>, <c>crun --version</c>).</summary>
public sealed class RuntimeHandlerProbe
{
    private static readonly TimeSpan VersionTimeout = TimeSpan.FromSeconds(5);

    private readonly ICommandRunner _commands;
    private readonly Func<IReadOnlyList<string>> _hybridV2Controllers;

    // The kubelet calls Status every few seconds: a good version answer is kept until the binary changes.
    private readonly System.Collections.Concurrent.ConcurrentDictionary<(string Name, string Path, DateTime Modified), RuntimeHandlerStatus> _answers = new();

    public RuntimeHandlerProbe(ICommandRunner commands)
        : this(commands, CgroupLayout.HybridV2Controllers)
    {
    }

    /// <summary>For tests: <paramref name="hybridV2Controllers"/> stands for the host's cgroup layout.</summary>
    internal RuntimeHandlerProbe(ICommandRunner commands, Func<IReadOnlyList<string>> hybridV2Controllers)
    {
        _commands = commands;
        _hybridV2Controllers = hybridV2Controllers;
    }

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
        if (!_answers.TryGetValue(key, out var status))
        {
            status = await AskAsync(handler, resolved, ct).ConfigureAwait(false);
            if (status.Version is not null)
            {
                _answers[key] = status;
            }
        }

        // The host's cgroup layout is read on every call, not cached: `make deps` can fix it while crestd runs.
        if (status.Version is not null && Path.GetFileName(resolved) == "crun" && _hybridV2Controllers() is { Count: > 0 } controllers)
        {
            return status with
            {
                Problem = $"runtime handler '{handler.Name}': crun refuses this host's hybrid cgroups (cgroup v1 plus a v2 hierarchy with the {string.Join(", ", controllers)} controller: \"cgroups in hybrid mode not supported, drop all controllers from cgroupv2\"); run make deps, which binds each to a v1 hierarchy at /sys/fs/cgroup/<controller> as systemd's hybrid layout does, or use runc",
            };
        }

        return status;
    }

    private async Task<RuntimeHandlerStatus> AskAsync(RuntimeHandlerOptions handler, string resolved, CancellationToken ct)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(VersionTimeout);
        try
        {
            var result = await _commands.RunAsync(new CommandLine(resolved, ["--version"]), timeout.Token).ConfigureAwait(false);
            if (result.ExitCode != 0)
            {
                return new RuntimeHandlerStatus(handler.Name, resolved, null,
                    $"runtime handler '{handler.Name}': '{resolved} --version' exited {result.ExitCode}: {result.StandardError.Trim()}");
            }

            return new RuntimeHandlerStatus(handler.Name, resolved, ParseVersion(result.StandardOutput), null)
            {
                Features = await AskFeaturesAsync(resolved, timeout.Token).ConfigureAwait(false),
            };
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

    /// <summary>The runtime's features document (<c>RUNTIME features</c>); a runtime too old to have one supports nothing optional.</summary>
    private async Task<OciRuntimeFeatures> AskFeaturesAsync(string resolved, CancellationToken ct)
    {
        var result = await _commands.RunAsync(new CommandLine(resolved, ["features"]), ct).ConfigureAwait(false);
        return result.ExitCode == 0 ? ParseFeatures(result.StandardOutput) : OciRuntimeFeatures.None;
    }

    /// <summary>mountOptions, linux.namespaces and linux.mountExtensions.idmap.enabled of an OCI features document.</summary>
    internal static OciRuntimeFeatures ParseFeatures(string json)
    {
        try
        {
            using var doc = System.Text.Json.JsonDocument.Parse(json);
            var root = doc.RootElement;
            static IReadOnlyList<string> Strings(System.Text.Json.JsonElement e, string name) =>
                e.ValueKind == System.Text.Json.JsonValueKind.Object && e.TryGetProperty(name, out var a) && a.ValueKind == System.Text.Json.JsonValueKind.Array
                    ? [.. a.EnumerateArray().Where(x => x.ValueKind == System.Text.Json.JsonValueKind.String).Select(x => x.GetString()!)]
                    : [];
            var linux = root.TryGetProperty("linux", out var l) ? l : default;
            var idmap = linux.ValueKind == System.Text.Json.JsonValueKind.Object
                && linux.TryGetProperty("mountExtensions", out var ext) && ext.ValueKind == System.Text.Json.JsonValueKind.Object
                && ext.TryGetProperty("idmap", out var id) && id.ValueKind == System.Text.Json.JsonValueKind.Object
                && id.TryGetProperty("enabled", out var en) && en.ValueKind == System.Text.Json.JsonValueKind.True;
            return new OciRuntimeFeatures(Strings(root, "mountOptions"), Strings(linux, "namespaces"), idmap);
        }
        catch (System.Text.Json.JsonException)
        {
            return OciRuntimeFeatures.None;
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
