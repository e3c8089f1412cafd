using Crest.Core;

namespace Crest.Linux;

public static class DeviceNumbers
{
    /// <summary>The type ("c", "b", "p") and major/minor numbers of a device node on this host.</summary>
    public static unsafe (string Type, long Major, long Minor) Of(string path)
    {
        var buffer = stackalloc byte[256];
        if (Interop.StatX(Interop.AT_FDCWD, path, 0, 0x1 /* STATX_TYPE */, buffer) != 0)
        {
            throw new CrestException(ErrorKind.InvalidArgument, $"device {path} does not exist on this node");
        }

        var mode = *(ushort*)(buffer + 28) & Interop.S_IFMT;
        // struct statx: stx_rdev_major at 128, stx_rdev_minor at 132.
        var major = *(uint*)(buffer + 128);
        var minor = *(uint*)(buffer + 132);
        var type = mode switch
        {
            Interop.S_IFCHR => "c",
            Interop.S_IFBLK => "b",
            Interop.S_IFIFO => "p",
            _ => throw new CrestException(ErrorKind.InvalidArgument, $"{path} is not a device node"),
        };
        return (type, major, minor);
    }
}
