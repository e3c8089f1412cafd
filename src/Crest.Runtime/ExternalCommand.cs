using System.Diagnostics;
using Crest.Core;

namespace Crest.Runtime;

/// <summary>One invocation of an external program: argv built from a typed options record, never through a shell.</summary>
public sealed record CommandLine(string Program, IReadOnlyList<string> Arguments)
{
    /// <summary>Variables added to (or replacing) the daemon's environment.</summary>
    public IReadOnlyDictionary<string, string>? Environment { get; init; }

    /// <summary>Bytes written to the program's standard input, then closed.</summary>
    public string? StandardInput { get; init; }

    public override string ToString() => string.Join(' ', Arguments.Prepend(Program));
}

public sealed record CommandResult(int ExitCode, string StandardOutput, string StandardError);

/// <summary>Seam over running external programs, so code above it is testable without the binaries.</summary>
public interface ICommandRunner
{
    Task<CommandResult> RunAsync(CommandLine command, CancellationToken ct);
}

/// <summary>Runs programs with <see cref="Process"/>; the caller's token kills the program.</summary>
public sealed class ProcessCommandRunner : ICommandRunner
{
    public async Task<CommandResult> RunAsync(CommandLine command, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(command);
        var start = new ProcessStartInfo(command.Program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in command.Arguments)
        {
            start.ArgumentList.Add(a);
        }

        foreach (var (k, v) in command.Environment ?? new Dictionary<string, string>())
        {
            start.Environment[k] = v;
        }

        using var process = new Process { StartInfo = start };
        try
        {
            process.Start();
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new CrestException(ErrorKind.FailedPrecondition, $"could not run {command.Program}: {e.Message}", e);
        }

        if (command.StandardInput is { } input)
        {
            await process.StandardInput.WriteAsync(input.AsMemory(), ct).ConfigureAwait(false);
        }

        process.StandardInput.Close();
        // Disposed here: Process.Dispose leaves streams read synchronously open until a finalizer runs, and a soak of
        // a few hundred pods left hundreds of pipe ends open in crestd that way.
        using var output = process.StandardOutput;
        using var error = process.StandardError;
        var stdout = output.ReadToEndAsync(ct);
        var stderr = error.ReadToEndAsync(ct);
        try
        {
            await process.WaitForExitAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw;
        }

        return new CommandResult(process.ExitCode, await stdout.ConfigureAwait(false), await stderr.ConfigureAwait(false));
    }
}
