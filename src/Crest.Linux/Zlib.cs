using System.Runtime.InteropServices;

namespace Crest.Linux;

/// <summary>
/// zlib with a preset dictionary, through the system's libz: SPDY compresses its header blocks with one zlib stream
/// per direction primed with a fixed dictionary, which System.IO.Compression cannot do. Each call handles one
/// header block, flushed with Z_SYNC_FLUSH so the peer can decode it at once.
/// </summary>
public abstract unsafe class ZlibStreamBase : IDisposable
{
    private protected readonly Interop.ZStream* Stream;
    private protected readonly byte[] Dictionary;
    private bool _disposed;

    private protected ZlibStreamBase(byte[] dictionary)
    {
        Dictionary = dictionary;
        Stream = (Interop.ZStream*)NativeMemory.AllocZeroed((nuint)sizeof(Interop.ZStream));
    }

    private protected abstract void End();

    public void Dispose()
    {
        if (!_disposed)
        {
            _disposed = true;
            End();
            NativeMemory.Free(Stream);
        }

        GC.SuppressFinalize(this);
    }

    private protected static string Message(Interop.ZStream* stream, int rc) =>
        stream->Msg != 0 ? Marshal.PtrToStringUTF8(stream->Msg) ?? $"zlib error {rc}" : $"zlib error {rc}";

    private protected const int ZOk = 0;
    private protected const int ZNeedDict = 2;
    private protected const int ZBufError = -5;
    private protected const int ZSyncFlush = 2;
}

/// <summary>The receiving side: inflates successive blocks of one zlib stream, supplying the dictionary when asked.</summary>
public sealed unsafe class ZlibInflater : ZlibStreamBase
{
    public ZlibInflater(byte[] dictionary) : base(dictionary)
    {
        var rc = Interop.InflateInit(Stream, Interop.ZlibVersion(), sizeof(Interop.ZStream));
        if (rc != ZOk)
        {
            throw new InvalidOperationException($"inflateInit failed: {rc}");
        }
    }

    public byte[] Inflate(ReadOnlySpan<byte> block, int maxOutput = 1 << 20)
    {
        using var output = new MemoryStream();
        var buffer = new byte[16 * 1024];
        fixed (byte* input = block, dict = Dictionary, outp = buffer)
        {
            Stream->NextIn = input;
            Stream->AvailIn = (uint)block.Length;
            while (true)
            {
                Stream->NextOut = outp;
                Stream->AvailOut = (uint)buffer.Length;
                var rc = Interop.Inflate(Stream, ZSyncFlush);
                if (rc == ZNeedDict)
                {
                    rc = Interop.InflateSetDictionary(Stream, dict, (uint)Dictionary.Length);
                    if (rc != ZOk)
                    {
                        throw new InvalidDataException($"the header block was compressed with another dictionary ({Message(Stream, rc)})");
                    }

                    continue;
                }

                var produced = buffer.Length - (int)Stream->AvailOut;
                output.Write(buffer, 0, produced);
                if (output.Length > maxOutput)
                {
                    throw new InvalidDataException($"a header block inflates to more than {maxOutput} bytes");
                }

                if (rc == ZBufError || (rc == ZOk && Stream->AvailIn == 0 && Stream->AvailOut != 0))
                {
                    break;
                }

                if (rc != ZOk)
                {
                    throw new InvalidDataException($"a header block does not inflate: {Message(Stream, rc)}");
                }
            }

            Stream->NextIn = null;
            Stream->NextOut = null;
        }

        return output.ToArray();
    }

    private protected override void End() => _ = Interop.InflateEnd(Stream);
}

/// <summary>The sending side: deflates successive blocks into one zlib stream primed with the dictionary.</summary>
public sealed unsafe class ZlibDeflater : ZlibStreamBase
{
    public ZlibDeflater(byte[] dictionary) : base(dictionary)
    {
        var rc = Interop.DeflateInit(Stream, 9, Interop.ZlibVersion(), sizeof(Interop.ZStream));
        if (rc != ZOk)
        {
            throw new InvalidOperationException($"deflateInit failed: {rc}");
        }

        fixed (byte* dict = Dictionary)
        {
            rc = Interop.DeflateSetDictionary(Stream, dict, (uint)Dictionary.Length);
        }

        if (rc != ZOk)
        {
            throw new InvalidOperationException($"deflateSetDictionary failed: {rc}");
        }
    }

    public byte[] Deflate(ReadOnlySpan<byte> block)
    {
        using var output = new MemoryStream();
        var buffer = new byte[16 * 1024];
        fixed (byte* input = block, outp = buffer)
        {
            Stream->NextIn = input;
            Stream->AvailIn = (uint)block.Length;
            do
            {
                Stream->NextOut = outp;
                Stream->AvailOut = (uint)buffer.Length;
                var rc = Interop.Deflate(Stream, ZSyncFlush);
                if (rc is not (ZOk or ZBufError))
                {
                    throw new InvalidOperationException($"deflate failed: {Message(Stream, rc)}");
                }

                output.Write(buffer, 0, buffer.Length - (int)Stream->AvailOut);
            }
            while (Stream->AvailOut == 0);

            Stream->NextIn = null;
            Stream->NextOut = null;
        }

        return output.ToArray();
    }

    private protected override void End() => _ = Interop.DeflateEnd(Stream);
}

internal static unsafe partial class Interop
{
    [StructLayout(LayoutKind.Sequential)]
    internal struct ZStream
    {
        public byte* NextIn;
        public uint AvailIn;
        public nuint TotalIn;
        public byte* NextOut;
        public uint AvailOut;
        public nuint TotalOut;
        public nint Msg;
        public nint State;
        public nint ZAlloc;
        public nint ZFree;
        public nint Opaque;
        public int DataType;
        public nuint Adler;
        public nuint Reserved;
    }

    [LibraryImport("libz.so.1", EntryPoint = "zlibVersion")]
    internal static partial nint ZlibVersion();

    [LibraryImport("libz.so.1", EntryPoint = "inflateInit_")]
    internal static partial int InflateInit(ZStream* stream, nint version, int size);

    [LibraryImport("libz.so.1", EntryPoint = "inflate")]
    internal static partial int Inflate(ZStream* stream, int flush);

    [LibraryImport("libz.so.1", EntryPoint = "inflateSetDictionary")]
    internal static partial int InflateSetDictionary(ZStream* stream, byte* dictionary, uint length);

    [LibraryImport("libz.so.1", EntryPoint = "inflateEnd")]
    internal static partial int InflateEnd(ZStream* stream);

    [LibraryImport("libz.so.1", EntryPoint = "deflateInit_")]
    internal static partial int DeflateInit(ZStream* stream, int level, nint version, int size);

    [LibraryImport("libz.so.1", EntryPoint = "deflate")]
    internal static partial int Deflate(ZStream* stream, int flush);

    [LibraryImport("libz.so.1", EntryPoint = "deflateSetDictionary")]
    internal static partial int DeflateSetDictionary(ZStream* stream, byte* dictionary, uint length);

    [LibraryImport("libz.so.1", EntryPoint = "deflateEnd")]
    internal static partial int DeflateEnd(ZStream* stream);
}
