using System.Diagnostics;
using Xunit;

namespace Crest.TestKit;

/// <summary>
/// A static binary that keeps starting children with vfork(2): each child sleeps CHILD_MS before it execs
/// <c>/bin/busybox true</c> (its parent waits in vfork all that time), the parent then prints <c>round N</c> and sleeps
/// PARENT_MS on average (half to one and a half times it, at random, so a freeze that takes as long as a round does not
/// land at the same point of every round). It stands in for glibc's system() and posix_spawn, Go's os/exec and Python's subprocess, whose children
/// spend microseconds where these spend milliseconds, so a freeze lands in the wait most of the time instead of rarely.
/// Built with the C compiler <c>make deps</c> installs for the Native AOT link; static, so it runs in a busybox rootfs.
/// </summary>
public static class VforkWorkload
{
    private const string Source = """
        #include <stdio.h>
        #include <stdlib.h>
        #include <sys/wait.h>
        #include <time.h>
        #include <unistd.h>

        static void sleep_ms(long ms) { struct timespec t = { ms / 1000, (ms % 1000) * 1000000L }; nanosleep(&t, 0); }

        int main(int argc, char **argv) {
            long child_ms = argc > 1 ? atol(argv[1]) : 20, parent_ms = argc > 2 ? atol(argv[2]) : 20;
            srand((unsigned)time(0) ^ (unsigned)getpid());
            for (unsigned long round = 1;; round++) {
                pid_t child = vfork();
                if (child == 0) {
                    sleep_ms(child_ms);
                    execl("/bin/busybox", "true", (char *)0);
                    _exit(127);
                }
                if (child < 0) { perror("vfork"); return 1; }
                waitpid(child, 0, 0);
                printf("round %lu\n", round);
                fflush(stdout);
                sleep_ms(parent_ms / 2 + (parent_ms > 0 ? rand() % parent_ms : 0));
            }
        }
        """;

    /// <summary>Compiles the workload into <paramref name="directory"/> and returns the binary's path; skips where no C compiler is installed.</summary>
    public static async Task<string> BuildAsync(string directory, CancellationToken ct)
    {
        var cc = Requires.Binary("cc");
        var source = Path.Combine(directory, "vfork-loop.c");
        var binary = Path.Combine(directory, "vfork-loop");
        await File.WriteAllTextAsync(source, Source, ct);
        using var compile = Process.Start(new ProcessStartInfo(cc, ["-static", "-O2", "-o", binary, source]) { RedirectStandardError = true })!;
        var errors = await compile.StandardError.ReadToEndAsync(ct);
        await compile.WaitForExitAsync(ct);
        Assert.True(compile.ExitCode == 0, $"cc -static failed ({compile.ExitCode}): {errors}");
        return binary;
    }
}
