// PeakCache: a cached peak is what every later run quotes MFU against, and says so.

import Foundation
import GomlCore
@testable import GomlTrain
import XCTest

final class PeakCacheTests: XCTestCase {
    func testACachedPeakIsReadBackAndNamed() throws {
        let dir = StrategyTableTests.temporaryDirectory()
        setenv("GOML_DIST_CACHE", dir, 1)
        defer { unsetenv("GOML_DIST_CACHE") }
        let key = "\(PeakCache.cpuName), fp32, OpenBLAS \(BLAS.coreName), 1 thread(s)"
        let entries: [String: Any] = [key: ["gflops": 123.5, "measured": "2026-01-02T03:04:05Z"]]
        try JSONSerialization.data(withJSONObject: entries).write(to: URL(fileURLWithPath: dir + "/product-peaks.json"))
        for _ in 0..<3 {
            let peak = PeakCache.peak(.fp32, threads: 1)
            XCTAssertEqual(peak.gflops, 123.5, "the cached figure, not a new sample")
            XCTAssertTrue(peak.source.contains("2026-01-02T03:04:05Z") && peak.source.contains(dir), peak.source)
        }
        // Another thread count is another entry: measured (not read from the fp32 1-thread one).
        XCTAssertFalse(PeakCache.peak(.fp32, threads: 2).source.contains("2026-01-02"))
    }

    /// A busy machine is one whose *other* processes keep the cores busy: this process's own
    /// spinning threads (OpenBLAS's, after a product) once kept every first measurement uncached.
    func testThisProcessesOwnThreadsDoNotMakeTheMachineBusy() throws {
        guard PeakCache.othersBusyShare() != nil else { throw XCTSkip("no /proc/stat here") }
        let spinning = ManagedAtomicFlag()
        let thread = Thread { while !spinning.isSet {} }
        thread.start()
        defer { spinning.set() }
        Thread.sleep(forTimeInterval: 0.05)
        let share = try XCTUnwrap(PeakCache.othersBusyShare())
        XCTAssertLessThan(share, 0.25, "a thread of this process spinning counted as another process")
    }
}

/// A flag one thread sets and another polls.
private final class ManagedAtomicFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    func set() { lock.lock(); value = true; lock.unlock() }
}
