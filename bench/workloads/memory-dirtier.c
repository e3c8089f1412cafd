// memory-dirtier: the live-migration bench's workload (bench/Crest.Bench/MigrationScenario.cs), built static by the
// bench with clang (scripts/install-deps.sh installs it for the Native AOT link) and run as a container's only process.
//
//   memory-dirtier MIB RATE_MIB_PER_S [TICK_MS]
//
// It holds MIB MiB of anonymous memory in which every 8-byte word is a function of its page's index, the page's
// generation and the word's place (never zero, so a page that arrives as zeros is caught). Every TICK_MS (10 by
// default) it rewrites the next pages round robin, as many as RATE MiB/s asks, and bumps their generations, then
// prints one line stamped with the wall clock:
//
//   tick N at SECONDS.NANOS work_us W gap_us G
//
// W is how long the rewrite took (it grows while pages fault in from elsewhere), G the wall time since the previous
// tick began (one tick plus sleeping, or the whole switch-over when the process was migrated in between).
// SIGUSR1 asks for a check of every page against its generation, answered after the next tick with
//
//   verify ok pages P checksum C        or        verify BAD page P word W
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

enum { PAGE_BYTES = 4096, PAGE_WORDS = PAGE_BYTES / 8 };

static volatile sig_atomic_t verify_requested;

static void on_verify_signal(int signal_number)
{
    (void)signal_number;
    verify_requested = 1;
}

static uint64_t word_value(uint64_t page, uint64_t generation, uint64_t word)
{
    uint64_t x = (page << 20) ^ (generation << 44) ^ word ^ 0x9E3779B97F4A7C15ull;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return x | 1;
}

static void write_page(uint64_t *memory, uint64_t page, uint64_t generation)
{
    uint64_t *words = memory + page * PAGE_WORDS;
    for (uint64_t w = 0; w < PAGE_WORDS; w++) {
        words[w] = word_value(page, generation, w);
    }
}

static int64_t nanos(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void verify(const uint64_t *memory, const uint32_t *generations, uint64_t pages)
{
    uint64_t checksum = 0;
    for (uint64_t p = 0; p < pages; p++) {
        const uint64_t *words = memory + p * PAGE_WORDS;
        for (uint64_t w = 0; w < PAGE_WORDS; w++) {
            if (words[w] != word_value(p, generations[p], w)) {
                printf("verify BAD page %llu word %llu\n", (unsigned long long)p, (unsigned long long)w);
                fflush(stdout);
                return;
            }

            checksum = (checksum ^ words[w]) * 0x100000001B3ull;
        }
    }

    printf("verify ok pages %llu checksum %016llx\n", (unsigned long long)pages, (unsigned long long)checksum);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: memory-dirtier MIB RATE_MIB_PER_S [TICK_MS]\n");
        return 2;
    }

    const uint64_t mib = strtoull(argv[1], NULL, 10);
    const double rate = strtod(argv[2], NULL);
    const long tick_ms = argc == 4 ? strtol(argv[3], NULL, 10) : 10;
    if (mib == 0 || rate < 0 || tick_ms <= 0 || tick_ms >= 1000) {
        fprintf(stderr, "memory-dirtier: MIB must be positive, RATE not negative and TICK_MS between 1 and 999\n");
        return 2;
    }

    const uint64_t pages = mib * (1024 * 1024 / PAGE_BYTES);
    uint64_t *memory = mmap(NULL, pages * PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *generations = calloc(pages, sizeof *generations);
    if (memory == MAP_FAILED || generations == NULL) {
        perror("memory-dirtier: allocating the memory");
        return 1;
    }

    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_verify_signal;
    action.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &action, NULL);
    for (uint64_t p = 0; p < pages; p++) {
        write_page(memory, p, 0);
    }

    printf("filled %llu MiB, rewriting %.3f MiB/s every %ld ms\n", (unsigned long long)mib, rate, tick_ms);
    fflush(stdout);

    const double pages_per_tick = rate * (1024.0 * 1024.0 / PAGE_BYTES) * (double)tick_ms / 1000.0;
    double owed = 0;
    uint64_t cursor = 0;
    int64_t previous = nanos(CLOCK_REALTIME);
    for (uint64_t tick = 1;; tick++) {
        const int64_t began = nanos(CLOCK_REALTIME);
        const int64_t work_began = nanos(CLOCK_MONOTONIC);
        owed += pages_per_tick;
        for (; owed >= 1; owed -= 1) {
            write_page(memory, cursor, ++generations[cursor]);
            cursor = (cursor + 1) % pages;
        }

        const int64_t work = nanos(CLOCK_MONOTONIC) - work_began;
        printf("tick %llu at %lld.%09lld work_us %lld gap_us %lld\n", (unsigned long long)tick, (long long)(began / 1000000000),
               (long long)(began % 1000000000), (long long)(work / 1000), (long long)((began - previous) / 1000));
        fflush(stdout);
        previous = began;
        if (verify_requested) {
            verify_requested = 0;
            verify(memory, generations, pages);
        }

        // A relative sleep: after a migration the monotonic clock may be another machine's.
        const int64_t rest = (int64_t)tick_ms * 1000000 - (nanos(CLOCK_MONOTONIC) - work_began);
        if (rest > 0) {
            struct timespec pause = { .tv_sec = rest / 1000000000, .tv_nsec = rest % 1000000000 };
            while (nanosleep(&pause, &pause) != 0) {
            }
        }
    }
}
