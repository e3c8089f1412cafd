using Crest.Images;
using Runtime.V1;

namespace Crest.Daemon.Cri;

/// <summary>The CRI ImageService: one partial file per RPC, each mapping to <see cref="Images.ImageService"/>.</summary>
internal sealed partial class CriImageService(Images.ImageService images, Crest.Core.CrestPaths paths, TimeProvider time) : global::Runtime.V1.ImageService.ImageServiceBase
{
    /// <summary>The CRI view of an image: ID, names, size, the user its config runs as.</summary>
    internal static Image ToCri(Crest.Core.ImageRecord record, string? configUser)
    {
        var image = new Image
        {
            Id = record.Id.ToString(),
            Size = (ulong)record.Size,
            Spec = new ImageSpec { Image = record.Id.ToString() },
        };
        image.RepoTags.Add(record.RepoTags);
        image.RepoDigests.Add(record.RepoDigests);
        var user = (configUser ?? "").Split(':')[0];
        if (long.TryParse(user, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var uid))
        {
            image.Uid = new Int64Value { Value = uid };
        }
        else
        {
            image.Username = user;
        }

        return image;
    }

    internal static RegistryCredentials? Credentials(AuthConfig? auth)
    {
        if (auth is null)
        {
            return null;
        }

        var username = auth.Username;
        var password = auth.Password;
        if (string.IsNullOrEmpty(username) && !string.IsNullOrEmpty(auth.Auth))
        {
            // "auth" is base64("user:password"), as in a Docker config.json.
            try
            {
                var decoded = System.Text.Encoding.UTF8.GetString(Convert.FromBase64String(auth.Auth));
                var colon = decoded.IndexOf(':', StringComparison.Ordinal);
                if (colon > 0)
                {
                    username = decoded[..colon];
                    password = decoded[(colon + 1)..];
                }
            }
            catch (FormatException e)
            {
                throw new Crest.Core.CrestException(Crest.Core.ErrorKind.InvalidArgument, "the pull's auth field is not base64 of user:password", e);
            }
        }

        var creds = new RegistryCredentials(
            string.IsNullOrEmpty(username) ? null : username,
            string.IsNullOrEmpty(password) ? null : password,
            string.IsNullOrEmpty(auth.IdentityToken) ? null : auth.IdentityToken,
            string.IsNullOrEmpty(auth.RegistryToken) ? null : auth.RegistryToken);
        return creds == new RegistryCredentials() ? null : creds;
    }

    private async Task<Image> ToCriAsync(Crest.Core.ImageRecord record, CancellationToken ct)
    {
        var details = await images.InspectAsync(record.Id.ToString(), ct);
        return ToCri(record, details?.Config.Config?.User);
    }
}
