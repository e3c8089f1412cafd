namespace Crest.Cli;

/// <summary>crest's exit codes; scripts can tell "the runtime said no" from "no runtime there".</summary>
internal static class ExitCodes
{
    public const int Success = 0;

    /// <summary>The runtime answered with an error status.</summary>
    public const int RuntimeError = 1;

    /// <summary>Bad flags, arguments or endpoint.</summary>
    public const int Usage = 2;

    /// <summary>Nothing to talk to: the socket is missing, refuses connections or may not be opened.</summary>
    public const int Unreachable = 3;

    /// <summary>Something answered, but it is not a CRI v1 server.</summary>
    public const int NotCri = 4;

    /// <summary>The call did not finish within --timeout.</summary>
    public const int Timeout = 5;
}
