using System.Net.Sockets;
using Crest.Core;
using Crest.Linux;

namespace Crest.Runtime;

// Port-forward: a TCP connection to the pod's own loopback, made inside its network namespace.
public sealed partial class SandboxService
{
    private static readonly TimeSpan PortForwardConnectTimeout = TimeSpan.FromSeconds(10);

    /// <summary>The check the PortForward RPC makes: the pod exists and is ready (it has a network namespace).</summary>
    public async Task<SandboxRecord> RequireReadyAsync(string idOrPrefix, CancellationToken ct)
    {
        var s = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        return s.State == SandboxState.Ready && s.NetnsPath is not null
            ? s
            : throw new CrestException(ErrorKind.FailedPrecondition, $"pod sandbox {s.Id} is {s.State}, not ready; ports are forwarded only into a ready pod");
    }

    /// <summary>Connects to 127.0.0.1:<paramref name="port"/> inside the pod's network namespace.</summary>
    public async Task<Socket> ConnectPortAsync(string idOrPrefix, int port, CancellationToken ct)
    {
        if (port is < 1 or > 65535)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"port {port} is not a TCP port (1-65535)");
        }

        var s = await RequireReadyAsync(idOrPrefix, ct).ConfigureAwait(false);
        return await NetworkNamespaces.ConnectLoopbackAsync(s.NetnsPath!, port, PortForwardConnectTimeout).WaitAsync(ct).ConfigureAwait(false);
    }
}
