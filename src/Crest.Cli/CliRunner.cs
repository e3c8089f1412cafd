using Grpc.Core;

namespace Crest.Cli;

/// <summary>Runs a command body and turns every failure into one line on stderr and the right exit code.</summary>
internal static class CliRunner
{
    public static TextWriter Error { get; set; } = Console.Error;

    public static Task<int> RunAsync(Func<Task> body) => RunAsync(async () =>
    {
        await body();
        return ExitCodes.Success;
    });

    public static async Task<int> RunAsync(Func<Task<int>> body)
    {
        ArgumentNullException.ThrowIfNull(body);
        try
        {
            return await body();
        }
        catch (CliUsageException e)
        {
            await Error.WriteLineAsync($"crest: {e.Message}");
            return ExitCodes.Usage;
        }
        catch (CliFailure e)
        {
            await Error.WriteLineAsync($"crest: {e.Message}");
            return e.ExitCode;
        }
    }

    /// <summary>One CRI call with the connection's deadline; failures come back explained.</summary>
    public static async Task<T> CallAsync<T>(CriConnection connection, string rpc, Func<CallOptions, Task<T>> call, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(connection);
        ArgumentNullException.ThrowIfNull(call);
        connection.CheckSocketExists();
        try
        {
            return await call(connection.CallOptions(ct));
        }
        catch (RpcException e)
        {
            throw connection.Explain(e, rpc);
        }
    }
}
