using System.Runtime.InteropServices;

namespace Crest.Linux;

/// <summary>posix_spawn and friends: .NET's Process API cannot hand a child extra file descriptors.</summary>
internal static unsafe partial class Interop
{
    // glibc's posix_spawn_file_actions_t is 80 bytes on x86_64 and arm64; leave room.
    internal const int SpawnFileActionsSize = 256;

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_init", SetLastError = true)]
    internal static partial int SpawnFileActionsInit(void* actions);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_destroy", SetLastError = true)]
    internal static partial int SpawnFileActionsDestroy(void* actions);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_adddup2", SetLastError = true)]
    internal static partial int SpawnFileActionsAddDup2(void* actions, int fd, int newFd);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_addopen", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int SpawnFileActionsAddOpen(void* actions, int fd, string path, int flags, uint mode);

    // glibc's posix_spawnattr_t is 336 bytes on x86_64; leave room.
    internal const int SpawnAttrSize = 512;
    internal const short POSIX_SPAWN_SETSIGDEF = 0x04;
    internal const short POSIX_SPAWN_SETSIGMASK = 0x08;
    internal const short POSIX_SPAWN_SETSID = 0x80;

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_init", SetLastError = true)]
    internal static partial int SpawnAttrInit(void* attr);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_destroy", SetLastError = true)]
    internal static partial int SpawnAttrDestroy(void* attr);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_setflags", SetLastError = true)]
    internal static partial int SpawnAttrSetFlags(void* attr, short flags);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_setsigdefault", SetLastError = true)]
    internal static partial int SpawnAttrSetSigDefault(void* attr, void* sigset);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_setsigmask", SetLastError = true)]
    internal static partial int SpawnAttrSetSigMask(void* attr, void* sigset);

    [LibraryImport("libc", EntryPoint = "sigfillset", SetLastError = true)]
    internal static partial int SigFillSet(void* sigset);

    [LibraryImport("libc", EntryPoint = "sigemptyset", SetLastError = true)]
    internal static partial int SigEmptySet(void* sigset);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    internal static partial int FcntlDupFd(int fd, int command, int minFd);

    internal const int F_DUPFD_CLOEXEC = 1030;

    [LibraryImport("libc", EntryPoint = "posix_spawn", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int PosixSpawn(out int pid, string path, void* fileActions, void* attributes, byte** argv, byte** envp);

    [LibraryImport("libc", EntryPoint = "waitpid", SetLastError = true)]
    internal static partial int WaitPid(int pid, out int status, int options);

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    internal static partial int Kill(int pid, int signal);

    [LibraryImport("libc", EntryPoint = "socketpair", SetLastError = true)]
    internal static partial int SocketPair(int domain, int type, int protocol, int* fds);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    internal static partial int Close(int fd);

    private const long SYS_pidfd_open = 434;
    private const long SYS_pidfd_getfd = 438;

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall3(long number, long a, long b, long c);

    /// <summary>pidfd_open(2): a descriptor for process <paramref name="pid"/>.</summary>
    internal static int PidFdOpen(int pid) => (int)Syscall3(SYS_pidfd_open, pid, 0, 0);

    /// <summary>pidfd_getfd(2): a copy of descriptor <paramref name="targetFd"/> of the process behind <paramref name="pidFd"/>.</summary>
    internal static int PidFdGetFd(int pidFd, int targetFd) => (int)Syscall3(SYS_pidfd_getfd, pidFd, targetFd, 0);

    [LibraryImport("libc", EntryPoint = "setsockopt", SetLastError = true)]
    internal static partial int SetSockOpt(int fd, int level, int name, void* value, uint length);

    [LibraryImport("libc", EntryPoint = "getsockopt", SetLastError = true)]
    internal static partial int GetSockOpt(int fd, int level, int name, void* value, uint* length);

    [LibraryImport("libc", EntryPoint = "getsockname", SetLastError = true)]
    internal static partial int GetSockName(int fd, byte* address, uint* length);

    [LibraryImport("libc", EntryPoint = "send", SetLastError = true)]
    internal static partial nint Send(int fd, byte* buffer, nint length, int flags);

    [LibraryImport("libc", EntryPoint = "recv", SetLastError = true)]
    internal static partial nint Recv(int fd, byte* buffer, nint length, int flags);

    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    internal static partial int Poll(PollFd* fds, nuint count, int timeoutMs);

    [StructLayout(LayoutKind.Sequential)]
    internal struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    internal const int AF_UNIX = 1;
    internal const int SOCK_SEQPACKET = 5;
    internal const int SOCK_CLOEXEC = 0x80000;
    internal const int O_RDONLY = 0;
    internal const int O_WRONLY = 1;
    internal const int POLLIN = 0x1;
    internal const int WNOHANG = 1;
    internal const int EINTR = 4;
    internal const int ECHILD = 10;
    internal const int SIGKILL = 9;
}

internal static unsafe partial class Interop
{
    [LibraryImport("libc", EntryPoint = "pipe2", SetLastError = true)]
    internal static partial int Pipe2(int* fds, int flags);
}
