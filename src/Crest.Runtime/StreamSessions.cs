using System.Globalization;
using System.Net.Sockets;
using Crest.Core;
using Crest.Linux;
using Microsoft.Win32.SafeHandles;

namespace Crest.Runtime;

/// <summary>Which of a process's output streams a chunk came from.</summary>
public enum OutputChannel
{
    Stdout = 1,
    Stderr = 2,
}

/// <summary>Which of stdin, stdout and stderr a streaming session carries, and whether it has a terminal.</summary>
public sealed record StreamOptions(bool Stdin, bool Stdout, bool Stderr, bool Tty);

/// <summary>Receives a chunk of output; the session waits for it before reading more (back-pressure).</summary>
public delegate ValueTask OutputSink(OutputChannel stream, ReadOnlyMemory<byte> data, CancellationToken ct);

/// <summary>
/// A process's stdio, live: an exec'd command (its exit code is the session's end) or a container's main process
/// reached through its monitor (attach: the session ends when the container's output ends).
/// </summary>
public interface IStreamSession : IAsyncDisposable
{
    /// <summary>Copies output to <paramref name="sink"/> until the process ends; the exit code, or null when the session does not own one (attach).</summary>
    Task<int?> PumpAsync(OutputSink sink, CancellationToken ct);

    ValueTask WriteInputAsync(ReadOnlyMemory<byte> data, CancellationToken ct);

    /// <summary>End of input: the process reads EOF.</summary>
    void CloseInput();

    void Resize(ushort columns, ushort rows);
}

/// <summary>Where conmon's attach socket and control FIFO of one container are.</summary>
public sealed record ConmonAttachOptions
{
    public required string ContainerId { get; init; }
    /// <summary>The directory holding the <c>attach</c> socket (conmon's <c>--socket-dir-path</c>/ID, a link to the bundle).</summary>
    public required string SocketDirectory { get; init; }
    /// <summary>conmon's control FIFO (<c>bundle/ctl</c>): "1 H W" resizes the container's terminal.</summary>
    public required string ControlFifo { get; init; }
}

/// <summary>
/// <c>runc exec</c> in the foreground as crestd's child: pipes, or a pseudo-terminal whose master crestd keeps and
/// whose other end is runc's controlling terminal (runc then gives the command a terminal of its own and copies
/// between the two; a resize of ours reaches it as SIGWINCH). The exit code is runc's, which is the command's.
/// </summary>
internal sealed class RuncExecSession : IStreamSession
{
    private static readonly TimeSpan OutputGrace = TimeSpan.FromSeconds(2);
    private readonly ChildProcess _child;
    private readonly string _pidFile;
    private readonly string _processFile;
    private readonly PseudoTerminal? _pty;
    private readonly FileStream? _terminal;
    private readonly FileStream? _keyboard;
    private readonly FileStream? _stdin;
    private readonly FileStream? _stdout;
    private readonly FileStream? _stderr;
    private int _exited;

    private RuncExecSession(ChildProcess child, RuncExecOptions options, PseudoTerminal? pty, FileStream? stdin, FileStream? stdout, FileStream? stderr)
    {
        _child = child;
        _pidFile = options.PidFile;
        _processFile = options.ProcessFile;
        _pty = pty;
        // Two streams over the master: reads and writes happen at once on different threads.
        _terminal = pty is null ? null : new FileStream(new SafeFileHandle(pty.Master.DangerousGetHandle(), ownsHandle: false), FileAccess.Read, 1);
        _keyboard = pty is null ? null : new FileStream(new SafeFileHandle(pty.Master.DangerousGetHandle(), ownsHandle: false), FileAccess.Write, 1);
        _stdin = stdin;
        _stdout = stdout;
        _stderr = stderr;
    }

    /// <summary>Spawns <paramref name="runtime"/> with <paramref name="arguments"/> (argv after the program) on pipes or a terminal.</summary>
    public static RuncExecSession Start(string runtime, IReadOnlyList<string> arguments, RuncExecOptions options, StreamOptions streams, IReadOnlyDictionary<string, string> environment)
    {
        IReadOnlyList<string> argv = [runtime, .. arguments];
        if (options.Tty)
        {
            var pty = PseudoTerminal.Open();
            try
            {
                pty.Resize(80, 24);
                var child = ChildProcess.Spawn(runtime, argv,
                    [ChildFd.Terminal(0, pty.SecondaryPath), ChildFd.Terminal(1, pty.SecondaryPath), ChildFd.Terminal(2, pty.SecondaryPath)], environment, newSession: true);
                return new RuncExecSession(child, options, pty, null, null, null);
            }
            catch
            {
                pty.Dispose();
                throw;
            }
        }

        using var stdin = streams.Stdin ? new Pipe() : null;
        using var stdout = streams.Stdout ? new Pipe() : null;
        using var stderr = streams.Stderr ? new Pipe() : null;
        var spawned = ChildProcess.Spawn(runtime, argv,
        [
            stdin is null ? ChildFd.Null(0) : new ChildFd(0, stdin.ReadFd),
            stdout is null ? ChildFd.Null(1) : new ChildFd(1, stdout.WriteFd),
            stderr is null ? ChildFd.Null(2) : new ChildFd(2, stderr.WriteFd),
        ], environment);
        stdout?.CloseWrite();
        stderr?.CloseWrite();
        return new RuncExecSession(spawned, options, null, stdin?.OpenWriter(), stdout?.OpenReader(), stderr?.OpenReader());
    }

    public async Task<int?> PumpAsync(OutputSink sink, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(sink);
        var copies = new List<Task>();
        if (_terminal is not null)
        {
            copies.Add(CopyAsync(_terminal, OutputChannel.Stdout, sink, ct));
        }

        if (_stdout is not null)
        {
            copies.Add(CopyAsync(_stdout, OutputChannel.Stdout, sink, ct));
        }

        if (_stderr is not null)
        {
            copies.Add(CopyAsync(_stderr, OutputChannel.Stderr, sink, ct));
        }

        int code;
        try
        {
            code = await _child.WaitAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            KillCommand();
            throw;
        }

        Volatile.Write(ref _exited, 1);
        // A background child of the command may hold the output open: wait a little, not forever.
        await Task.WhenAny(Task.WhenAll(copies), Task.Delay(OutputGrace, ct)).ConfigureAwait(false);
        return code;
    }

    public async ValueTask WriteInputAsync(ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        var target = _keyboard ?? _stdin;
        if (target is null)
        {
            return;
        }

        try
        {
            await target.WriteAsync(data, ct).ConfigureAwait(false);
            await target.FlushAsync(ct).ConfigureAwait(false);
        }
        catch (IOException)
        {
            // The command closed its input or ended: what is left to write goes nowhere, as with a pipe.
        }
    }

    public void CloseInput()
    {
        if (_keyboard is not null)
        {
            // A terminal has no end of file, only the EOF character (^D) at the start of a line.
            _ = WriteInputAsync(new byte[] { 4 }, CancellationToken.None).AsTask();
            return;
        }

        _stdin?.Dispose();
    }

    public void Resize(ushort columns, ushort rows) => _pty?.Resize(columns, rows);

    public async ValueTask DisposeAsync()
    {
        if (Volatile.Read(ref _exited) == 0)
        {
            KillCommand();
            try
            {
                using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                await _child.WaitAsync(wait.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                _child.KillAndReap();
            }
        }

        _stdin?.Dispose();
        _stdout?.Dispose();
        _stderr?.Dispose();
        _terminal?.Dispose();
        _keyboard?.Dispose();
        _pty?.Dispose();
        TryDelete(_pidFile);
        TryDelete(_processFile);
    }

    /// <summary>Kills the command inside the container (by the pid runc wrote), which ends runc too.</summary>
    private void KillCommand()
    {
        try
        {
            if (File.Exists(_pidFile) && int.TryParse(File.ReadAllText(_pidFile).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && pid > 0)
            {
                _ = ChildProcess.Signal(pid, 9);
            }
        }
        catch (IOException)
        {
        }

        _ = ChildProcess.Signal(_child.Pid, 9);
    }

    /// <summary>Copies one output on a dedicated thread (reads of pipes and terminals block) until EOF, EIO or cancellation.</summary>
    private static Task CopyAsync(FileStream source, OutputChannel which, OutputSink sink, CancellationToken ct)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            var buffer = new byte[32 * 1024];
            try
            {
                while (!ct.IsCancellationRequested)
                {
                    var n = source.Read(buffer, 0, buffer.Length);
                    if (n == 0)
                    {
                        break;
                    }

                    sink(which, buffer.AsMemory(0, n), ct).AsTask().GetAwaiter().GetResult();
                }
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // EIO from a terminal's master once the last process holding the other end is gone, or a sink whose client left.
            }

            done.SetResult();
        })
        { IsBackground = true, Name = $"crest-exec-{which}" };
        thread.Start();
        return done.Task;
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>
/// A container's main process through conmon's attach socket (SOCK_SEQPACKET): each message from conmon starts
/// with the pipe it came from (2 stdout, 3 stderr); what is sent goes to the container's stdin as it is.
/// Resizes go through conmon's control FIFO. Detaching leaves the container running.
/// </summary>
internal sealed class ConmonAttachSession(Socket socket, ConmonAttachOptions options) : IStreamSession
{
    private const byte StdoutPipe = 2;
    private const byte StderrPipe = 3;

    public static async Task<ConmonAttachSession> ConnectAsync(ConmonAttachOptions options, CancellationToken ct)
    {
        try
        {
            var socket = await UnixSockets.ConnectAsync(options.SocketDirectory, "attach", SocketType.Seqpacket, ct).ConfigureAwait(false);
            return new ConmonAttachSession(socket, options);
        }
        catch (Exception e) when (e is IOException or SocketException)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"container {options.ContainerId}: conmon's attach socket in {options.SocketDirectory} cannot be reached: {e.Message}", e);
        }
    }

    public async Task<int?> PumpAsync(OutputSink sink, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(sink);
        // conmon sends at most 8192 bytes of output plus the pipe byte per message.
        var buffer = new byte[8192 + 1];
        while (true)
        {
            int n;
            try
            {
                n = await socket.ReceiveAsync(buffer, SocketFlags.None, ct).ConfigureAwait(false);
            }
            catch (SocketException)
            {
                return null;
            }

            if (n == 0)
            {
                return null;
            }

            if (n > 1 && buffer[0] is StdoutPipe or StderrPipe)
            {
                await sink(buffer[0] == StdoutPipe ? OutputChannel.Stdout : OutputChannel.Stderr, buffer.AsMemory(1, n - 1), ct).ConfigureAwait(false);
            }
        }
    }

    public async ValueTask WriteInputAsync(ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        try
        {
            await socket.SendAsync(data, SocketFlags.None, ct).ConfigureAwait(false);
        }
        catch (SocketException)
        {
        }
    }

    public void CloseInput()
    {
        try
        {
            socket.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException)
        {
        }
    }

    public void Resize(ushort columns, ushort rows)
    {
        var fd = FileKinds.OpenWriteNonBlocking(options.ControlFifo);
        if (fd < 0)
        {
            return; // conmon is gone: nothing to resize
        }

        using var fifo = new FileStream(new SafeFileHandle(fd, ownsHandle: true), FileAccess.Write, 1);
        fifo.Write(System.Text.Encoding.ASCII.GetBytes(string.Create(CultureInfo.InvariantCulture, $"1 {rows} {columns}\n")));
    }

    public ValueTask DisposeAsync()
    {
        socket.Dispose();
        return ValueTask.CompletedTask;
    }
}
