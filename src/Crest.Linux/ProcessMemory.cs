using System.Runtime.InteropServices;

namespace Crest.Linux;

/// <summary>The process's own memory: what it holds resident, and handing the C heap's free pages back to the kernel.</summary>
public static partial class ProcessMemory
{
    /// <summary>Resident bytes of this process (VmRSS).</summary>
    public static long ResidentBytes() => Environment.WorkingSet;

    /// <summary>
    /// Returns the free pages of glibc's malloc arenas to the kernel (malloc_trim): SQLite, zlib and zstd allocate there,
    /// and glibc keeps what a burst freed unless asked.
    /// </summary>
    public static void TrimNativeHeap() => _ = MallocTrim(0);

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);
}
