namespace Crest.Core;

/// <summary>What went wrong, in terms the CRI edge maps to a gRPC status code.</summary>
public enum ErrorKind
{
    Internal,
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    DeadlineExceeded,
    Unimplemented,
    DataLoss,
}

/// <summary>
/// A domain failure with a message meant for the operator: it names the object, what was expected,
/// what was found and what to do. Status codes are chosen at the server edge from <see cref="Kind"/>.
/// </summary>
public sealed class CrestException : Exception
{
    public CrestException(ErrorKind kind, string message, Exception? innerException = null)
        : base(message, innerException) => Kind = kind;

    public CrestException() : this(ErrorKind.Internal, "internal error") { }

    public CrestException(string message) : this(ErrorKind.Internal, message) { }

    public CrestException(string message, Exception innerException) : this(ErrorKind.Internal, message, innerException) { }

    public ErrorKind Kind { get; }
}
