namespace Crest.Checkpoint;

/// <summary>CRIU's version as one comparable number, computed the way go-criu and checkpointctl do.</summary>
public static class CriuVersion
{
    /// <summary>CRIU 4.2.0: older CRIU fails on the vDSO (3.17) or hangs during a dump (4.1) on current kernels.</summary>
    public const int Minimum = 40200;

    /// <summary>major*10000 + minor*100 + sublevel; a git build counts as the next minor release.</summary>
    public static int Number(int major, int minor, int sublevel, bool gitBuild)
    {
        var number = (major * 10000) + (minor * 100) + sublevel;
        return gitBuild ? (number / 100 * 100) + 100 : number;
    }

    public static string Format(int number) => $"{number / 10000}.{number / 100 % 100}.{number % 100}";
}
