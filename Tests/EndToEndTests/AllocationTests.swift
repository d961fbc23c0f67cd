// A steady-state training step allocates nothing. A malloc-counting shim (LD_PRELOAD) counts
// every heap allocation in the process, those whose caller lies in OpenMPI's libraries apart
// from the others; `goml-dist bench` reads the counts before and after its timed steps and
// prints the differences.

import Foundation
import XCTest

final class AllocationTests: XCTestCase {
    static let shimSource = """
    #define _GNU_SOURCE
    #include <dlfcn.h>
    #include <link.h>
    #include <stdlib.h>
    #include <string.h>
    #include <stdatomic.h>
    #include <unwind.h>
    extern void *__libc_malloc(size_t);
    extern void *__libc_calloc(size_t, size_t);
    extern void *__libc_realloc(void *, size_t);
    extern void *__libc_memalign(size_t, size_t);
    /* Two disjoint counters, never a total and a part: reading a total and a part one after the
       other while the communication thread allocates inside OpenMPI made "elsewhere" ±1. */
    static atomic_long inOpenMPI, elsewhere;
    static char lastElsewhere[256];
    static const char *objectOf(void *address) {
        struct dl_find_object found;
        if (_dl_find_object(address, &found) != 0 || !found.dlfo_link_map) return 0;
        return found.dlfo_link_map->l_name;
    }
    static int isOpenMPI(const char *name) {
        return name && (strstr(name, "/openmpi/") || strstr(name, "libmpi") || strstr(name, "libopen-")
                        || strstr(name, "pmix") || strstr(name, "libevent") || strstr(name, "hwloc"));
    }
    /* libc, the dynamic loader and libstdc++ allocate on behalf of whoever called them (strdup,
       stdio buffers, a thread's first touch of a dlopen'd library's TLS, operator new): the
       frame above them decides. This shim's own frames are skipped the same way. (The
       executable's name is "".) */
    static int allocatesForItsCaller(const char *name) {
        return name && (name == objectOf((void *)allocatesForItsCaller) || strstr(name, "/libc.so")
                        || strstr(name, "ld-linux") || strstr(name, "libstdc++"));
    }
    /* Unwinding allocates nothing: libgcc 12 finds frames through _dl_find_object. */
    static _Unwind_Reason_Code frame(struct _Unwind_Context *context, void *decider) {
        void *ip = (void *)_Unwind_GetIP(context);
        if (!ip) return _URC_END_OF_STACK;
        const char *name = objectOf(ip);
        if (allocatesForItsCaller(name)) return _URC_NO_REASON;
        *(const char **)decider = name;
        return _URC_END_OF_STACK;
    }
    static void count(void *caller) {
        const char *name = objectOf(caller);
        if (allocatesForItsCaller(name)) { name = 0; _Unwind_Backtrace(frame, &name); }
        if (isOpenMPI(name)) atomic_fetch_add(&inOpenMPI, 1);
        else {
            strncpy(lastElsewhere, !name ? "an unknown caller" : *name ? name : "the executable", sizeof lastElsewhere - 1);
            atomic_fetch_add(&elsewhere, 1);
        }
    }
    #define COUNT() count(__builtin_return_address(0))
    void *malloc(size_t n) { COUNT(); return __libc_malloc(n); }
    void *calloc(size_t a, size_t b) { COUNT(); return __libc_calloc(a, b); }
    void *realloc(void *p, size_t n) { COUNT(); return __libc_realloc(p, n); }
    void *memalign(size_t a, size_t n) { COUNT(); return __libc_memalign(a, n); }
    void *aligned_alloc(size_t a, size_t n) { COUNT(); return __libc_memalign(a, n); }
    int posix_memalign(void **p, size_t a, size_t n) {
        COUNT();
        *p = __libc_memalign(a, n);
        return *p ? 0 : 12;
    }
    long goml_heap_allocations(void) { return inOpenMPI + elsewhere; }
    long goml_heap_allocations_elsewhere(void) { return elsewhere; }
    const char *goml_heap_last_elsewhere(void) { return lastElsewhere; }
    """

    /// The shim, compiled into a fresh directory; returns its path.
    static func compileShim() throws -> String {
        let dir = Harness.temporaryDirectory("malloc")
        try shimSource.write(toFile: dir + "/count.c", atomically: true, encoding: .utf8)
        let cc = Harness.run("/usr/bin/env", ["cc", "-O2", "-shared", "-fPIC", "-o", dir + "/count.so", dir + "/count.c"], timeout: 120)
        Harness.assertSuccess(cc, "compiling the malloc-counting shim")
        return dir + "/count.so"
    }

    func testSteadyStateStepsDoNotAllocate() throws {
        let shim = try Self.compileShim()
        let dir = (shim as NSString).deletingLastPathComponent
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
                                timeout: 300, environment: ["LD_PRELOAD": shim])
            Harness.assertSuccess(r, mode)
            XCTAssertTrue(r.stdout.contains("heap allocations during the 20 timed steps: 0"), "\(mode):\n\(r.stdout)")
        }
    }

    /// Under `mpirun -np 2` with overlap, where the buckets' non-blocking all-reduces and the
    /// communication thread really run: on every rank, no allocation outside OpenMPI's
    /// libraries. OpenMPI itself allocates in libnbc's MPI_Start and in the blocking
    /// MPI_Allreduce; those counts are reported (docs/multihost-bench.md), not asserted.
    func testStepsUnderMPIAllocateNothingOutsideOpenMPI() throws {
        let shim = try Self.compileShim()
        for (mode, extra) in [("overlapped 50 kB buckets, micro-batches", ["--bucket-mb", "0.05", "--micro-batch", "1"]),
                              ("one bucket", []), ("after backward", ["--no-overlap"])] {
            let r = Harness.mpirun(np: 2, ["bench", "--config", "tiny", "--threads", "2", "--warmup", "3", "--steps", "20", "--precision", "fp32"] + extra,
                                   mpiOptions: ["-x", "LD_PRELOAD=" + shim])
            Harness.assertSuccess(r, mode)
            for rank in 0..<2 {
                let line = r.stdout.split(separator: "\n").first { $0.hasPrefix("rank \(rank): heap allocations during the 20 timed steps: ") }
                XCTAssertTrue(line?.hasSuffix(", elsewhere 0)") ?? false, "\(mode): \(line ?? "no allocation line for rank \(rank)")\n\(r.output)")
            }
        }
    }
}
