using System.Runtime.InteropServices;
using System.Text;

namespace Crest.Linux;

/// <summary>What a child process should see on a given descriptor number.</summary>
/// <param name="Number">the descriptor number in the child</param>
/// <param name="ParentFd">a descriptor of ours to dup into it, or -1 with <paramref name="DevNull"/></param>
/// <param name="OpenPath">a file the child opens read-write on this number (a terminal), instead of a descriptor of ours</param>
public readonly record struct ChildFd(int Number, int ParentFd, bool DevNull = false, string? OpenPath = null)
{
    public static ChildFd Null(int number) => new(number, -1, DevNull: true);

    /// <summary>The child opens <paramref name="path"/> itself; in a new session the first terminal opened becomes its controlling terminal.</summary>
    public static ChildFd Terminal(int number, string path) => new(number, -1, OpenPath: path);
}

/// <summary>
/// A child started with posix_spawn, so that it can be handed descriptors beyond stdio
/// (a socket for <c>criu swrk</c>, later conmon's pipes). Reaped with waitpid.
/// </summary>
public sealed class ChildProcess
{
    private ChildProcess(int pid) => Pid = pid;

    public int Pid { get; }

    /// <summary>Starts <paramref name="path"/> with <paramref name="argv"/> (argv[0] included) and the descriptors given.</summary>
    /// <param name="newSession">setsid() in the child before its descriptors are set up, so a terminal it opens becomes its controlling terminal</param>
    public static unsafe ChildProcess Spawn(string path, IReadOnlyList<string> argv, IEnumerable<ChildFd> descriptors,
        IReadOnlyDictionary<string, string>? environment = null, bool newSession = false)
    {
        ArgumentNullException.ThrowIfNull(argv);
        ArgumentNullException.ThrowIfNull(descriptors);
        var env = environment ?? CurrentEnvironment();
        var argvBlock = NullTerminatedStrings(argv);
        var envBlock = NullTerminatedStrings(env.Select(kv => $"{kv.Key}={kv.Value}").ToList());
        var actions = NativeMemory.AllocZeroed(Interop.SpawnFileActionsSize);
        var attributes = NativeMemory.AllocZeroed(Interop.SpawnAttrSize);
        var signals = NativeMemory.AllocZeroed(128);
        // Source descriptors are first copied above every target number, so no dup2 clobbers a later source.
        var lifted = new List<int>();
        try
        {
            // .NET ignores SIGPIPE and blocks some signals in its threads; a child starts with the defaults.
            Check(Interop.SpawnAttrInit(attributes), "posix_spawnattr_init");
            _ = Interop.SigFillSet(signals);
            Check(Interop.SpawnAttrSetSigDefault(attributes, signals), "posix_spawnattr_setsigdefault");
            _ = Interop.SigEmptySet(signals);
            Check(Interop.SpawnAttrSetSigMask(attributes, signals), "posix_spawnattr_setsigmask");
            var flags = (short)(Interop.POSIX_SPAWN_SETSIGDEF | Interop.POSIX_SPAWN_SETSIGMASK | (newSession ? Interop.POSIX_SPAWN_SETSID : 0));
            Check(Interop.SpawnAttrSetFlags(attributes, flags), "posix_spawnattr_setflags");
            var wanted = descriptors.ToList();
            var floor = wanted.Select(d => d.Number).DefaultIfEmpty(0).Max() + 1;
            var plan = new List<ChildFd>();
            foreach (var d in wanted)
            {
                if (d.DevNull || d.OpenPath is not null)
                {
                    plan.Add(d);
                    continue;
                }

                var high = Interop.FcntlDupFd(d.ParentFd, Interop.F_DUPFD_CLOEXEC, Math.Max(floor, 3));
                if (high < 0)
                {
                    throw new IOException($"could not duplicate descriptor {d.ParentFd} for {path}: {Marshal.GetLastPInvokeErrorMessage()}");
                }

                lifted.Add(high);
                plan.Add(d with { ParentFd = high });
            }

            Check(Interop.SpawnFileActionsInit(actions), "posix_spawn_file_actions_init");
            try
            {
                foreach (var d in plan)
                {
                    if (d.OpenPath is { } openPath)
                    {
                        Check(Interop.SpawnFileActionsAddOpen(actions, d.Number, openPath, Interop.O_RDWR, 0), "posix_spawn_file_actions_addopen");
                    }
                    else if (d.DevNull)
                    {
                        Check(Interop.SpawnFileActionsAddOpen(actions, d.Number, "/dev/null", d.Number == 0 ? Interop.O_RDONLY : Interop.O_WRONLY, 0),
                            "posix_spawn_file_actions_addopen");
                    }
                    else
                    {
                        // dup2 onto itself would keep O_CLOEXEC; glibc >= 2.29 clears it for us in that case.
                        Check(Interop.SpawnFileActionsAddDup2(actions, d.ParentFd, d.Number), "posix_spawn_file_actions_adddup2");
                    }
                }

                fixed (byte** a = argvBlock.Pointers, e = envBlock.Pointers)
                {
                    var rc = Interop.PosixSpawn(out var pid, path, actions, attributes, a, e);
                    if (rc != 0)
                    {
                        throw new IOException($"could not start {path}: {Marshal.GetPInvokeErrorMessage(rc)} (errno {rc})");
                    }

                    return new ChildProcess(pid);
                }
            }
            finally
            {
                _ = Interop.SpawnFileActionsDestroy(actions);
            }
        }
        finally
        {
            foreach (var fd in lifted)
            {
                _ = Interop.Close(fd);
            }

            _ = Interop.SpawnAttrDestroy(attributes);
            NativeMemory.Free(signals);
            NativeMemory.Free(attributes);
            NativeMemory.Free(actions);
            argvBlock.Free();
            envBlock.Free();
        }
    }

    /// <summary>Waits for the child to exit and returns its exit code (128+signal when killed).</summary>
    public async Task<int> WaitAsync(CancellationToken ct)
    {
        var delay = 1;
        while (true)
        {
            var pid = Interop.WaitPid(Pid, out var status, Interop.WNOHANG);
            if (pid == Pid)
            {
                return DecodeWaitStatus(status);
            }

            if (pid < 0)
            {
                var errno = Marshal.GetLastPInvokeError();
                if (errno == Interop.EINTR)
                {
                    continue;
                }

                throw new IOException($"waitpid({Pid}) failed: {Marshal.GetPInvokeErrorMessage(errno)}");
            }

            await Task.Delay(delay, ct).ConfigureAwait(false);
            delay = Math.Min(delay * 2, 50);
        }
    }

    /// <summary>Kills the child with SIGKILL and reaps it.</summary>
    public void KillAndReap()
    {
        _ = Interop.Kill(Pid, Interop.SIGKILL);
        while (Interop.WaitPid(Pid, out _, 0) < 0 && Marshal.GetLastPInvokeError() == Interop.EINTR)
        {
        }
    }

    /// <summary>Sends <paramref name="signal"/> to every process of a process group (a child spawned in a new session leads one).</summary>
    public static bool SignalGroup(int pgid, int signal) => pgid > 0 && Interop.Kill(-pgid, signal) == 0;

    /// <summary>Sends <paramref name="signal"/> to any process; false when it does not exist (or is not ours to signal).</summary>
    public static bool Signal(int pid, int signal) => pid > 0 && Interop.Kill(pid, signal) == 0;

    internal static int DecodeWaitStatus(int status)
    {
        var termSignal = status & 0x7f;
        return termSignal == 0 ? (status >> 8) & 0xff : 128 + termSignal;
    }

    private static Dictionary<string, string> CurrentEnvironment()
    {
        var env = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (System.Collections.DictionaryEntry e in Environment.GetEnvironmentVariables())
        {
            env[(string)e.Key] = (string?)e.Value ?? "";
        }

        return env;
    }

    private static void Check(int rc, string call)
    {
        if (rc != 0)
        {
            throw new IOException($"{call} failed: {Marshal.GetPInvokeErrorMessage(rc)}");
        }
    }

    private static unsafe StringBlock NullTerminatedStrings(IReadOnlyList<string> values)
    {
        var pointers = new byte*[values.Count + 1];
        for (var i = 0; i < values.Count; i++)
        {
            var bytes = Encoding.UTF8.GetBytes(values[i]);
            var p = (byte*)NativeMemory.Alloc((nuint)bytes.Length + 1);
            bytes.CopyTo(new Span<byte>(p, bytes.Length));
            p[bytes.Length] = 0;
            pointers[i] = p;
        }

        return new StringBlock(pointers);
    }

    private readonly unsafe struct StringBlock(byte*[] pointers)
    {
        public byte*[] Pointers { get; } = pointers;

        public void Free()
        {
            foreach (var p in Pointers)
            {
                if (p != null)
                {
                    NativeMemory.Free(p);
                }
            }
        }
    }
}
