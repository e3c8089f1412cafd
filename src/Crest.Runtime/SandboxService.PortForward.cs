using System.Net.Sockets;
using Crest.Core;

namespace Crest.Runtime;

// Port-forward: a TCP connection to the pod's own loopback, made inside its network namespace.
public sealed partial class SandboxService
{
    private static readonly TimeSpan PortForwardConnectTimeout = TimeSpan.FromSeconds(10);

    /// <summary>The check the PortForward RPC makes: the pod exists and is ready (a host-network pod has no namespace of its own).</summary>
    public async Task<SandboxRecord> RequireReadyAsync(string idOrPrefix, CancellationToken ct)
    {
        var s = await GetAsync(idOrPrefix, ct).ConfigureAwait(false);
        if (s.State != SandboxState.Ready)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"pod sandbox {s.Id} is {s.State}; ports are forwarded only into a ready pod");
        }

        return s.NetnsPath is not null || s.Spec.Namespaces.Network == NamespaceMode.Node
            ? s
            : throw new CrestException(ErrorKind.FailedPrecondition, $"pod sandbox {s.Id} is ready but has no network namespace on record; remove and recreate it");
    }

    /// <summary>Connects to 127.0.0.1:<paramref name="port"/> inside the pod's network namespace, or the node's for a host-network pod.</summary>
    public async Task<Socket> ConnectPortAsync(string idOrPrefix, int port, CancellationToken ct)
    {
        if (port is < 1 or > 65535)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"port {port} is not a TCP port (1-65535)");
        }

        var s = await RequireReadyAsync(idOrPrefix, ct).ConfigureAwait(false);
        if (s.NetnsPath is null)
        {
            var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
                timeout.CancelAfter(PortForwardConnectTimeout);
                await socket.ConnectAsync(System.Net.IPAddress.Loopback, port, timeout.Token).ConfigureAwait(false);
                return socket;
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException && !ct.IsCancellationRequested)
            {
                socket.Dispose();
                throw new CrestException(ErrorKind.Unavailable, $"port {port} of host-network pod {s.Id} (the node's 127.0.0.1) refused or did not answer: {e.Message}", e);
            }
        }

        return await linux.ConnectLoopbackAsync(s.NetnsPath, port, PortForwardConnectTimeout).WaitAsync(ct).ConfigureAwait(false);
    }
}
