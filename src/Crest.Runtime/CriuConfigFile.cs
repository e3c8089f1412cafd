using System.Text;
using Crest.Core;

namespace Crest.Runtime;

/// <summary>
/// The CRIU configuration file one CRIU run of a container reads: the options runc and crun have no flag for. Every
/// container Crest creates names its own file (<see cref="ContainerBundle.CriuConfig"/>) in <c>org.criu.config</c>,
/// and the runtime hands that path to CRIU on every checkpoint and restore; Crest writes the file just before the run
/// that needs it and removes it right after (CRIU skips a configuration file that is not there). Because the annotation
/// replaces the runtime's own default file (<see cref="RuntimeHandlerOptions.CriuDefaultConfig"/>), that file's
/// lines come first, so an operator's settings still apply; the lines Crest adds follow and win.
/// </summary>
public sealed record CriuConfigFile
{
    /// <summary>CRIU leaves the restored processes stopped (<c>leave-stopped</c>; see <see cref="CriuRestoreOptions.LeaveStopped"/>).</summary>
    public bool LeaveStopped { get; init; }

    /// <summary>
    /// CRIU does not lock the pod's network while it dumps or restores (<c>network-lock skip</c>). Its lock (iptables
    /// rules installed and removed by two iptables-restore runs per IP version, about 100–170 ms of a dump's freeze and
    /// 70 ms of a restore here) exists to keep established TCP connections consistent; a run without
    /// <c>--tcp-established</c> moves none (CRIU refuses to dump one), so it is skipped exactly then.
    /// </summary>
    public bool SkipNetworkLock { get; init; }

    /// <summary>
    /// A post-copy dump's page server speaks TLS with these files (<c>tls</c>, <c>tls-cacert</c>, <c>tls-cert</c>,
    /// <c>tls-key</c>): runc has no flag for them. CRIU reads the files when the target connects, after the dump wrote its
    /// images, so they stay until the page transfer ends.
    /// </summary>
    public PageTransferTls? PageServerTls { get; init; }

    /// <summary>The configuration of a dump or restore: the network lock only where TCP connections move.</summary>
    public static CriuConfigFile For(bool tcpEstablished, bool leaveStopped = false) =>
        new() { SkipNetworkLock = !tcpEstablished, LeaveStopped = leaveStopped };

    /// <summary>The lines Crest adds (CRIU's long option names without the dashes, one per line).</summary>
    public IReadOnlyList<string> Lines()
    {
        var lines = new List<string>();
        if (LeaveStopped)
        {
            lines.Add("leave-stopped");
        }

        if (SkipNetworkLock)
        {
            lines.Add("network-lock skip");
        }

        if (PageServerTls is { } tls)
        {
            lines.AddRange(tls.ConfigLines());
        }

        return lines;
    }

    /// <summary>The file's text: the runtime's default configuration (<paramref name="runtimeDefaults"/>, if any) and then Crest's lines.</summary>
    public string Render(string? runtimeDefaults)
    {
        var text = new StringBuilder();
        if (!string.IsNullOrWhiteSpace(runtimeDefaults))
        {
            text.Append(runtimeDefaults);
            if (!runtimeDefaults.EndsWith('\n'))
            {
                text.Append('\n');
            }
        }

        foreach (var line in Lines())
        {
            text.Append(line).Append('\n');
        }

        return text.ToString();
    }
}
