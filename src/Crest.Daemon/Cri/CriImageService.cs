using Runtime.V1;

namespace Crest.Daemon.Cri;

/// <summary>
/// The CRI ImageService. Nothing is overridden yet, so every RPC answers Unimplemented until the
/// images issue lands; one partial file per RPC will join this one.
/// </summary>
internal sealed partial class CriImageService : ImageService.ImageServiceBase
{
}
