using Crest.Daemon.Hosting;
using Crest.Linux;

namespace Crest.UnitTests;

[CollectionDefinition(nameof(ResidentMemory), DisableParallelization = true)]
public sealed class ResidentMemory;

/// <summary>When crestd gives memory back after a burst of work, and that giving back does return it.</summary>
[Collection(nameof(ResidentMemory))]
public sealed class MemoryTrimTests
{
    private const long MiB = 1 << 20;

    [Theory]
    [InlineData(100, 90, 3, 0, true)]    // a burst grew it 10 MiB and is over
    [InlineData(100, 90, 3, 1, false)]   // a call is still running
    [InlineData(100, 90, 0, 0, false)]   // no call since the last trim: the growth is not crestd's work to give back
    [InlineData(100, 95, 40, 0, false)]  // steady polling grew it less than 8 MiB
    [InlineData(90, 100, 5, 0, false)]   // it shrank by itself
    public void It_trims_after_calls_with_none_in_flight_once_resident_memory_grew_8_MiB(long residentMiB, long afterLastTrimMiB, long calls, long inFlight, bool trims) =>
        Assert.Equal(trims, MemoryTrimPolicy.ShouldTrim(residentMiB * MiB, afterLastTrimMiB * MiB, calls, inFlight));

    [Fact]
    public void A_trim_returns_a_freed_heap_to_the_kernel()
    {
        // 96 MiB of touched arrays, large and small, then dropped: what a pull or a checkpoint leaves behind.
        Fill();
        var before = ProcessMemory.ResidentBytes();

        MemoryTrimmer.Trim();

        var after = ProcessMemory.ResidentBytes();
        Assert.True(before - after > 48 * MiB, $"resident memory went from {before / MiB} MiB to {after / MiB} MiB; at least 48 MiB of the 96 freed should have gone back");
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static void Fill()
    {
        var keep = new List<byte[]>();
        for (var i = 0; i < 96; i++)
        {
            var chunk = i % 2 == 0 ? new byte[MiB] : null;
            if (chunk is null)
            {
                for (var j = 0; j < 64; j++)
                {
                    keep.Add(Touch(new byte[16 * 1024]));
                }
            }
            else
            {
                keep.Add(Touch(chunk));
            }
        }

        GC.KeepAlive(keep);
    }

    private static byte[] Touch(byte[] bytes)
    {
        for (var i = 0; i < bytes.Length; i += 4096)
        {
            bytes[i] = 1;
        }

        return bytes;
    }
}
