using System.Text.Json;
using Crest.TestKit;

namespace Crest.E2ETests;

/// <summary>
/// The workload of the checkpoint, restore and streaming tests: a busybox shell that prints "count N" (N from 1) at a
/// steady pace, so its CRI log shows whether the process kept counting, froze, started over or went on after a restore.
/// </summary>
internal static class CounterWorkload
{
    /// <summary>The script every engine runs (Podman as <c>sh -c</c>, CRI engines through busybox).</summary>
    public const string Script = "i=0; while true; do i=$((i+1)); echo count $i; sleep 0.1; done";

    /// <summary>The metadata the kubelet puts on a container, which a restore adapts: hash, restart count and name.</summary>
    public const string KubeletMetadata = """
        "annotations": {"io.kubernetes.container.hash": "A", "io.kubernetes.container.restartCount": "0", "safe.annotation": "true"},
        "labels": {"io.kubernetes.container.name": "counter"},
        """;

    /// <summary>The counter with <paramref name="eachCount"/> run after every line (e.g. <c>echo $i &gt; /data/last;</c>) and another pace.</summary>
    public static string ScriptWith(string eachCount = "", string period = "0.1") =>
        $"i=0; while true; do i=$((i+1)); echo count $i; {eachCount}sleep {period}; done";

    /// <summary>
    /// Writes a crictl container config named "counter" that runs <paramref name="script"/> from <paramref name="image"/>,
    /// logging to counter.log in the pod's log directory; <paramref name="more"/> is JSON members to add, each followed by a comma.
    /// </summary>
    public static async Task<string> WriteConfigAsync(TempDir dir, string image, string more = "", string script = Script, string file = "counter.json")
    {
        ArgumentNullException.ThrowIfNull(dir);
        var path = dir.Combine(file);
        await File.WriteAllTextAsync(path, $$"""
            {"metadata": {"name": "counter"}, "image": {"image": "{{image}}"},
             "command": ["/bin/busybox", "sh", "-c", {{JsonSerializer.Serialize(script)}}],
             {{more}}
             "log_path": "counter.log", "linux": {} }
            """, TestContext.Current.CancellationToken);
        return path;
    }
}
