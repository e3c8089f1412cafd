using System.Runtime.InteropServices;

namespace Crest.Linux;

/// <summary>System V IPC (shmget(2), shmctl(2), msgctl(2), semctl(2)); the buffers follow the 64-bit kernel layout (x86_64, arm64).</summary>
internal static unsafe partial class Interop
{
    internal const int CLONE_NEWIPC = 0x08000000;

    internal const int IPC_PRIVATE = 0;
    internal const int IPC_CREAT = 0x200;
    internal const int IPC_EXCL = 0x400;
    internal const int IPC_RMID = 0;
    internal const int IPC_SET = 1;
    internal const int SHM_LOCK = 11;
    internal const int SHM_STAT = 13;
    internal const int SHM_INFO = 14;
    internal const int SHM_RDONLY = 0x1000;
    internal const uint SHM_DEST = 0x200;
    internal const uint SHM_LOCKED = 0x400;
    internal const int MSG_STAT = 11;
    internal const int MSG_INFO = 12;
    internal const int SEM_STAT = 18;
    internal const int SEM_INFO = 19;

    /// <summary>Room for any of shmid64_ds (112 bytes), msqid64_ds, semid64_ds, shm_info, msginfo and seminfo.</summary>
    internal const int IpcBufferSize = 256;

    // struct ipc64_perm: key, uid, gid, cuid, cgid, mode (4 bytes each), seq; then shmid64_ds goes on at 48.
    internal const int PermKeyOffset = 0;
    internal const int PermUidOffset = 4;
    internal const int PermGidOffset = 8;
    internal const int PermModeOffset = 20;
    internal const int ShmSegszOffset = 48;
    internal const int ShmNattchOffset = 88;

    [LibraryImport("libc", EntryPoint = "shmget", SetLastError = true)]
    internal static partial int ShmGet(int key, nuint size, int flags);

    [LibraryImport("libc", EntryPoint = "shmctl", SetLastError = true)]
    internal static partial int ShmCtl(int id, int command, byte* buffer);

    [LibraryImport("libc", EntryPoint = "shmat", SetLastError = true)]
    internal static partial nint ShmAt(int id, nint address, int flags);

    [LibraryImport("libc", EntryPoint = "shmdt", SetLastError = true)]
    internal static partial int ShmDt(nint address);

    [LibraryImport("libc", EntryPoint = "msgctl", SetLastError = true)]
    internal static partial int MsgCtl(int id, int command, byte* buffer);

    // semctl is variadic; its fourth argument (union semun) is a pointer here, passed in the same register either way.
    [LibraryImport("libc", EntryPoint = "semctl", SetLastError = true)]
    internal static partial int SemCtl(int id, int semaphore, int command, byte* buffer);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    internal static partial nint Write(int fd, byte* buffer, nint count);
}
