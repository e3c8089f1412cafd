using System.Buffers.Binary;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using Crest.Core;

namespace Crest.Linux;

/// <summary>What a save or restore moved.</summary>
/// <param name="MarkedForDestruction">Segments that were marked for removal (SHM_DEST) when saved; see <see cref="SysVSharedMemory"/>.</param>
public sealed record SysVShmSummary(int Segments, long TotalBytes, int MarkedForDestruction);

/// <summary>
/// Saves a pod IPC namespace's System V shared memory and puts it back into a fresh one, for pod checkpoint (KEP-5823).
/// runc restore makes CRIU join the pod's IPC namespace by path, so CRIU does not recreate its contents; it re-attaches
/// each process with shmat on the ORIGINAL id. Restore therefore recreates every segment with the same id (through
/// /proc/sys/kernel/shm_next_id), key, size, permission bits, owner and bytes, before the containers are restored.
/// <para>
/// Each call runs on a dedicated thread that setns(CLONE_NEWIPC)s into the namespace file and then ends, so no pooled
/// thread ever changes namespace; the ipc sysctls resolve to the namespace of the thread that opens them, so
/// shm_next_id is opened there too.
/// </para>
/// <para>Limits:</para>
/// <list type="bullet">
/// <item>Message queues and semaphore sets are refused at save (FailedPrecondition): only shared memory is carried.</item>
/// <item>A namespace with kernel.shm_rmid_forced=1 is refused (FailedPrecondition) when it has segments to save or is
/// to receive any: there a segment is destroyed when its last attachment ends, which the save's or restore's own detach would do.</item>
/// <item>A segment marked for destruction (IPC_RMID while attached, SHM_DEST) is saved and recreated as an ordinary
/// IPC_PRIVATE segment: a restored segment with no attachment cannot be marked without vanishing at once, so it lives
/// until it is removed or the pod's IPC namespace ends. The summary counts them.</item>
/// <item>The creator (cuid/cgid), times and pids are not restorable; the creator becomes crestd. Owners are saved as
/// seen from crestd's user namespace, so a restore into a pod with another id mapping keeps the host ids.</item>
/// <item>SHM_HUGETLB and SHM_NORESERVE are not visible through shmctl: segments come back on normal pages. SHM_LOCKED is
/// restored (SHM_LOCK).</item>
/// <item>Reading a segment touches every page, so pages never written before are allocated by the save.</item>
/// </list>
/// </summary>
public static class SysVSharedMemory
{
    private const string NextIdFile = "/proc/sys/kernel/shm_next_id";
    private const string RmidForcedFile = "/proc/sys/kernel/shm_rmid_forced";
    private const int ChunkBytes = 1 << 20;

    /// <summary>
    /// Writes every shared memory segment of the IPC namespace at <paramref name="ipcNamespaceFile"/> to
    /// <paramref name="output"/> in the <see cref="SysVShmImage"/> format. Every user of the segments must be frozen:
    /// the bytes are read without any lock.
    /// </summary>
    public static SysVShmSummary Save(string ipcNamespaceFile, Stream output, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(ipcNamespaceFile);
        ArgumentNullException.ThrowIfNull(output);
        return InNamespace(ipcNamespaceFile, "crest-shm-save", () =>
        {
            RefuseOtherIpcObjects(ipcNamespaceFile);
            var segments = List(ipcNamespaceFile);
            if (segments.Count > 0)
            {
                RefuseRmidForced(ipcNamespaceFile, "save");
            }

            SysVShmImage.WriteHeader(output, segments);
            long total = 0;
            foreach (var s in segments)
            {
                ct.ThrowIfCancellationRequested();
                CopyOut(ipcNamespaceFile, s, output, ct);
                total += s.Size;
            }

            output.Flush();
            return new SysVShmSummary(segments.Count, total, segments.Count(s => s.MarkedForDestruction));
        });
    }

    /// <summary>
    /// Recreates the segments of an image read from <paramref name="input"/> (untrusted: checked by
    /// <see cref="SysVShmImage.ReadHeader"/>, at most <paramref name="maxTotalBytes"/> in all) in the IPC namespace at
    /// <paramref name="ipcNamespaceFile"/>, each with its saved id. A namespace that already holds one of the ids is
    /// refused before anything is created; on any failure the segments this call created are removed.
    /// </summary>
    public static SysVShmSummary Restore(string ipcNamespaceFile, Stream input, long maxTotalBytes, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(ipcNamespaceFile);
        ArgumentNullException.ThrowIfNull(input);
        var segments = SysVShmImage.ReadHeader(input, maxTotalBytes);
        return InNamespace(ipcNamespaceFile, "crest-shm-restore", () =>
        {
            var taken = List(ipcNamespaceFile).Select(s => s.Id).ToHashSet();
            var clash = segments.Where(s => taken.Contains(s.Id)).Select(s => s.Id.ToString(CultureInfo.InvariantCulture)).ToList();
            if (clash.Count > 0)
            {
                throw new CrestException(ErrorKind.FailedPrecondition,
                    $"IPC namespace {ipcNamespaceFile} already has shared memory segment id(s) {string.Join(", ", clash)} that the checkpoint needs; restore into a fresh pod");
            }

            if (segments.Count > 0)
            {
                RefuseRmidForced(ipcNamespaceFile, "restore");
            }

            var created = new List<int>();
            try
            {
                long total = 0;
                foreach (var s in segments)
                {
                    ct.ThrowIfCancellationRequested();
                    created.Add(Create(ipcNamespaceFile, s));
                    Configure(ipcNamespaceFile, s);
                    CopyIn(ipcNamespaceFile, s, input, ct);
                    total += s.Size;
                }

                SysVShmImage.ExpectEnd(input);
                return new SysVShmSummary(segments.Count, total, segments.Count(s => s.MarkedForDestruction));
            }
            catch
            {
                foreach (var id in created)
                {
                    unsafe
                    {
                        _ = Interop.ShmCtl(id, Interop.IPC_RMID, null);
                    }
                }

                throw;
            }
            finally
            {
                TryWriteNextId(-1);
            }
        });
    }

    /// <summary>The segments of the calling thread's IPC namespace, by index (SHM_INFO for the highest, SHM_STAT for each).</summary>
    private static unsafe List<SysVShmSegment> List(string ns)
    {
        var buffer = stackalloc byte[Interop.IpcBufferSize];
        var maxIndex = Interop.ShmCtl(0, Interop.SHM_INFO, buffer);
        if (maxIndex < 0)
        {
            throw new CrestException(ErrorKind.Internal, $"shmctl(SHM_INFO) in IPC namespace {ns} failed: {Marshal.GetLastPInvokeErrorMessage()}");
        }

        var result = new List<SysVShmSegment>();
        for (var index = 0; index <= maxIndex; index++)
        {
            new Span<byte>(buffer, Interop.IpcBufferSize).Clear();
            var id = Interop.ShmCtl(index, Interop.SHM_STAT, buffer);
            if (id < 0)
            {
                if (Marshal.GetLastPInvokeError() == Interop.EINVAL)
                {
                    continue; // an unused index
                }

                throw new CrestException(ErrorKind.Internal, $"shmctl(SHM_STAT, {index}) in IPC namespace {ns} failed: {Marshal.GetLastPInvokeErrorMessage()}");
            }

            var b = new ReadOnlySpan<byte>(buffer, Interop.IpcBufferSize);
            result.Add(new SysVShmSegment(
                id,
                BinaryPrimitives.ReadInt32LittleEndian(b[Interop.PermKeyOffset..]),
                (long)BinaryPrimitives.ReadUInt64LittleEndian(b[Interop.ShmSegszOffset..]),
                // glibc may declare mode as 16 bits and padding; the kernel's word is 32 bits, the flags fit in 16.
                BinaryPrimitives.ReadUInt32LittleEndian(b[Interop.PermModeOffset..]) & (SysVShmImage.ModePermissions | SysVShmImage.ModeDestroy | SysVShmImage.ModeLocked),
                BinaryPrimitives.ReadUInt32LittleEndian(b[Interop.PermUidOffset..]),
                BinaryPrimitives.ReadUInt32LittleEndian(b[Interop.PermGidOffset..])));
        }

        return result;
    }

    /// <summary>Message queues and semaphore sets would be lost silently, so a namespace holding any is refused.</summary>
    private static void RefuseOtherIpcObjects(string ns)
    {
        var queues = Count(ns, semaphores: false);
        var semaphores = Count(ns, semaphores: true);
        if (queues + semaphores > 0)
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"IPC namespace {ns} holds {queues} System V message queue(s) and {semaphores} semaphore set(s); pod checkpoint saves only shared memory segments, so these would be lost. Checkpoint the containers one by one or stop using them");
        }
    }

    /// <summary>How many message queues (MSG_INFO, MSG_STAT) or semaphore sets (SEM_INFO, SEM_STAT) the namespace holds.</summary>
    private static unsafe int Count(string ns, bool semaphores)
    {
        var what = semaphores ? "semaphore sets" : "message queues";
        var buffer = stackalloc byte[Interop.IpcBufferSize];
        var maxIndex = semaphores ? Interop.SemCtl(0, 0, Interop.SEM_INFO, buffer) : Interop.MsgCtl(0, Interop.MSG_INFO, buffer);
        if (maxIndex < 0)
        {
            throw new CrestException(ErrorKind.Internal, $"listing the {what} of IPC namespace {ns} failed: {Marshal.GetLastPInvokeErrorMessage()}");
        }

        var count = 0;
        for (var index = 0; index <= maxIndex; index++)
        {
            var id = semaphores ? Interop.SemCtl(index, 0, Interop.SEM_STAT, buffer) : Interop.MsgCtl(index, Interop.MSG_STAT, buffer);
            if (id >= 0)
            {
                count++;
            }
            else if (Marshal.GetLastPInvokeError() != Interop.EINVAL)
            {
                throw new CrestException(ErrorKind.Internal, $"listing the {what} of IPC namespace {ns} failed at index {index}: {Marshal.GetLastPInvokeErrorMessage()}");
            }
        }

        return count;
    }

    private static unsafe void CopyOut(string ns, SysVShmSegment s, Stream output, CancellationToken ct)
    {
        var address = Interop.ShmAt(s.Id, 0, Interop.SHM_RDONLY);
        if (address == -1)
        {
            throw new CrestException(ErrorKind.Internal, $"attaching shared memory segment {s.Id} of IPC namespace {ns} to read it failed: {Marshal.GetLastPInvokeErrorMessage()}");
        }

        try
        {
            for (long done = 0; done < s.Size; done += ChunkBytes)
            {
                ct.ThrowIfCancellationRequested();
                output.Write(new ReadOnlySpan<byte>((byte*)address + done, (int)Math.Min(ChunkBytes, s.Size - done)));
            }
        }
        finally
        {
            _ = Interop.ShmDt(address);
        }
    }

    /// <summary>
    /// With kernel.shm_rmid_forced=1 a segment goes away when its last attachment does (shm_may_destroy), so the
    /// detach after reading or filling one would destroy it: a saved segment of a running pod, or every restored one.
    /// </summary>
    private static void RefuseRmidForced(string ns, string operation)
    {
        // Read on this thread: the ipc sysctls belong to the namespace of the thread that opens them.
        if (File.ReadAllText(RmidForcedFile).Trim() != "0")
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"IPC namespace {ns} has kernel.shm_rmid_forced=1, so shared memory segments vanish when their last attachment ends; a pod checkpoint cannot {operation} them there. Leave the sysctl at 0 for pods that are checkpointed");
        }
    }

    /// <summary>Creates <paramref name="s"/> with its saved id and key; returns the id (created, so the caller removes it on failure).</summary>
    private static unsafe int Create(string ns, SysVShmSegment s)
    {
        WriteNextId(ns, s.Id);
        var key = s.MarkedForDestruction ? Interop.IPC_PRIVATE : s.Key;
        var id = Interop.ShmGet(key, (nuint)s.Size, Interop.IPC_CREAT | Interop.IPC_EXCL | (int)(s.Mode & SysVShmImage.ModePermissions));
        if (id < 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            throw errno == Interop.EEXIST
                ? new CrestException(ErrorKind.FailedPrecondition, $"IPC namespace {ns} already has a shared memory segment with key 0x{s.Key:x8}, which the checkpoint's segment {s.Id} needs; restore into a fresh pod")
                : new CrestException(ErrorKind.Internal, $"creating shared memory segment {s.Id} (key 0x{s.Key:x8}, {s.Size} bytes) in IPC namespace {ns} failed: {Marshal.GetPInvokeErrorMessage(errno)}");
        }

        if (id != s.Id)
        {
            _ = Interop.ShmCtl(id, Interop.IPC_RMID, null);
            throw new CrestException(ErrorKind.Internal,
                $"the kernel gave shared memory segment id {id} instead of {s.Id} in IPC namespace {ns} (shm_next_id not honoured: a kernel without CONFIG_CHECKPOINT_RESTORE, or another creator meanwhile); the processes could not re-attach");
        }

        return id;
    }

    /// <summary>Gives a created segment its saved owner and permission bits, and locks it if it was locked.</summary>
    private static unsafe void Configure(string ns, SysVShmSegment s)
    {
        var id = s.Id;
        var buffer = stackalloc byte[Interop.IpcBufferSize];
        var b = new Span<byte>(buffer, Interop.IpcBufferSize);
        b.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(b[Interop.PermUidOffset..], s.Uid);
        BinaryPrimitives.WriteUInt32LittleEndian(b[Interop.PermGidOffset..], s.Gid);
        BinaryPrimitives.WriteUInt32LittleEndian(b[Interop.PermModeOffset..], s.Mode & SysVShmImage.ModePermissions);
        if (Interop.ShmCtl(id, Interop.IPC_SET, buffer) != 0)
        {
            throw new CrestException(ErrorKind.Internal, $"setting owner {s.Uid}:{s.Gid} and mode {Convert.ToString(s.Mode & SysVShmImage.ModePermissions, 8)} of shared memory segment {id} in IPC namespace {ns} failed: {Marshal.GetLastPInvokeErrorMessage()}");
        }

        if ((s.Mode & SysVShmImage.ModeLocked) != 0 && Interop.ShmCtl(id, Interop.SHM_LOCK, null) != 0)
        {
            throw new CrestException(ErrorKind.Internal, $"locking shared memory segment {id} in memory (SHM_LOCK, as it was saved) in IPC namespace {ns} failed: {Marshal.GetLastPInvokeErrorMessage()}");
        }
    }

    private static unsafe void CopyIn(string ns, SysVShmSegment s, Stream input, CancellationToken ct)
    {
        var address = Interop.ShmAt(s.Id, 0, 0);
        if (address == -1)
        {
            throw new CrestException(ErrorKind.Internal, $"attaching shared memory segment {s.Id} of IPC namespace {ns} to fill it failed: {Marshal.GetLastPInvokeErrorMessage()}");
        }

        try
        {
            using var destination = new UnmanagedMemoryStream((byte*)address, s.Size, s.Size, FileAccess.Write);
            SysVShmImage.CopyContents(input, s, destination, ct);
        }
        finally
        {
            _ = Interop.ShmDt(address);
        }
    }

    private static void WriteNextId(string ns, int id)
    {
        if (!TryWriteNextId(id, out var error))
        {
            throw new CrestException(ErrorKind.FailedPrecondition,
                $"writing {id} to {NextIdFile} in IPC namespace {ns} failed ({error}); restoring shared memory needs a kernel with CONFIG_CHECKPOINT_RESTORE and CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN");
        }
    }

    private static void TryWriteNextId(int id) => _ = TryWriteNextId(id, out _);

    /// <summary>Opened on the calling thread: the ipc sysctls belong to the IPC namespace of the thread that opens them.</summary>
    private static unsafe bool TryWriteNextId(int id, out string error)
    {
        var fd = Interop.Open(NextIdFile, Interop.O_WRONLY | Interop.O_CLOEXEC, 0);
        if (fd < 0)
        {
            error = Marshal.GetLastPInvokeErrorMessage();
            return false;
        }

        try
        {
            var text = Encoding.ASCII.GetBytes(id.ToString(CultureInfo.InvariantCulture));
            fixed (byte* p = text)
            {
                if (Interop.Write(fd, p, text.Length) != text.Length)
                {
                    error = Marshal.GetLastPInvokeErrorMessage();
                    return false;
                }
            }

            error = "";
            return true;
        }
        finally
        {
            _ = Interop.Close(fd);
        }
    }

    /// <summary>Runs <paramref name="work"/> on a new thread that has entered the IPC namespace at <paramref name="ns"/> and ends afterwards.</summary>
    private static T InNamespace<T>(string ns, string threadName, Func<T> work)
    {
        T result = default!;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                var fd = Interop.Open(ns, Interop.O_RDONLY | Interop.O_CLOEXEC, 0);
                if (fd < 0)
                {
                    throw new CrestException(ErrorKind.FailedPrecondition, $"IPC namespace {ns} cannot be opened: {Marshal.GetLastPInvokeErrorMessage()}");
                }

                try
                {
                    if (Interop.SetNs(fd, Interop.CLONE_NEWIPC) != 0)
                    {
                        throw new CrestException(ErrorKind.FailedPrecondition, $"entering IPC namespace {ns} (setns) failed: {Marshal.GetLastPInvokeErrorMessage()}; is it an ipc namespace file?");
                    }
                }
                finally
                {
                    _ = Interop.Close(fd);
                }

                result = work();
            }
            catch (Exception e)
            {
                failure = e;
            }
        })
        { IsBackground = true, Name = threadName };
        thread.Start();
        thread.Join();
        if (failure is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }

        return result;
    }
}
