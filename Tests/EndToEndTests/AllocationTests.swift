// A steady-state training step allocates nothing. A malloc-counting shim (LD_PRELOAD) counts
// every heap allocation in the process; `goml-dist bench` reads the count before and after its
// timed steps and prints the difference.

import Foundation
import XCTest

final class AllocationTests: XCTestCase {
    static let shimSource = """
    #define _GNU_SOURCE
    #include <stdio.h>
    #include <stdlib.h>
    #include <stdatomic.h>
    extern void *__libc_malloc(size_t);
    extern void *__libc_calloc(size_t, size_t);
    extern void *__libc_realloc(void *, size_t);
    extern void *__libc_memalign(size_t, size_t);
    static atomic_long allocations;
    void *malloc(size_t n) { atomic_fetch_add(&allocations, 1); return __libc_malloc(n); }
    void *calloc(size_t a, size_t b) { atomic_fetch_add(&allocations, 1); return __libc_calloc(a, b); }
    void *realloc(void *p, size_t n) { atomic_fetch_add(&allocations, 1); return __libc_realloc(p, n); }
    void *memalign(size_t a, size_t n) { atomic_fetch_add(&allocations, 1); return __libc_memalign(a, n); }
    void *aligned_alloc(size_t a, size_t n) { atomic_fetch_add(&allocations, 1); return __libc_memalign(a, n); }
    int posix_memalign(void **p, size_t a, size_t n) {
        atomic_fetch_add(&allocations, 1);
        *p = __libc_memalign(a, n);
        return *p ? 0 : 12;
    }
    long goml_heap_allocations(void) { return allocations; }
    """

    func testSteadyStateStepsDoNotAllocate() throws {
        let dir = Harness.temporaryDirectory("malloc")
        try Self.shimSource.write(toFile: dir + "/count.c", atomically: true, encoding: .utf8)
        let cc = Harness.run("/usr/bin/env", ["cc", "-O2", "-shared", "-fPIC", "-o", dir + "/count.so", dir + "/count.c"], timeout: 120)
        Harness.assertSuccess(cc, "compiling the malloc-counting shim")
        // The corpus mapped in pieces of 997 bytes: sequences that cross files allocate nothing either.
        let corpus = [UInt8](try XCTUnwrap(FileManager.default.contents(atPath: Harness.corpus)))
        for (i, start) in stride(from: 0, to: corpus.count, by: 997).enumerated() {
            try Data(corpus[start..<min(start + 997, corpus.count)]).write(to: URL(fileURLWithPath: dir + String(format: "/corpus-%05d", i)))
        }
        let pieces = (try FileManager.default.contentsOfDirectory(atPath: dir)).filter { $0.hasPrefix("corpus-") }.sorted().map { dir + "/" + $0 }
        // Overlap is on by default; 50 kB buckets make several per step, summed across workers.
        for (mode, extra) in [("allreduce, 2 workers", ["--threads", "2"]), ("allreduce, 1 worker", ["--threads", "1"]),
                              ("overlapped buckets, micro-batches, 2 workers", ["--threads", "2", "--bucket-mb", "0.05", "--micro-batch", "1"]),
                              ("after backward", ["--threads", "2", "--no-overlap"]),
                              ("exact", ["--reduction", "exact"]), ("mapped files", ["--threads", "2", "--data"] + pieces)] {
            let r = Harness.run(Harness.binary, ["bench", "--single", "--config", "tiny", "--warmup", "3", "--steps", "20", "--precision", "fp32"] + extra,
                                timeout: 300, environment: ["LD_PRELOAD": dir + "/count.so"])
            Harness.assertSuccess(r, mode)
            XCTAssertTrue(r.stdout.contains("heap allocations during the 20 timed steps: 0"), "\(mode):\n\(r.stdout)")
        }
    }
}
