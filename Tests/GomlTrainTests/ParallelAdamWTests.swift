// ParallelAdamW on a real WorkerPool: the bits of one thread's AdamW, and each owned range
// reported in order, on the calling thread, only once every thread has updated its piece
// (the sharded strategy starts that bucket's all-gather there).

import Foundation
import GomlCore
@testable import GomlTrain
import XCTest

final class ParallelAdamWTests: XCTestCase {
    func testRangesAreReportedInOrderOnTheCallerOnceEveryPieceIsUpdated() {
        let layout = ParameterLayout(.tiny), n = layout.count
        // Owned ranges as a rank's bucket slices: out of layout order, cutting tensors, one empty.
        let cuts = [0, n / 5 + 3, 2 * n / 5 + 1, 3 * n / 5 + 7, 4 * n / 5, n]
        let slices = zip(cuts, cuts.dropFirst()).map { $0..<$1 }.reversed() + [n..<n]
        let owned = slices.map { (parameters: $0, gradient: $0.lowerBound) }
        var rng = Xoshiro256(seed: 11)
        let initial = (0..<n).map { _ in Float(rng.nextGaussian() * 0.02) }
        let gradients = (0..<3).map { _ in (0..<n).map { _ in Float(rng.nextGaussian()) } }

        // The reference: one thread, AdamW.update; the expected parameters after each step.
        let reference = AdamW(layout: layout, config: OptimizerConfig(), owned: owned)
        var expected: [[Float]] = [], p = initial
        for g in gradients {
            p.withUnsafeMutableBufferPointer { pp in g.withUnsafeBufferPointer { reference.update(pp.baseAddress!, grads: $0.baseAddress!, lr: 1e-3, gradScale: 0.25) } }
            expected.append(p)
        }

        let params = FloatBuffer(initial), gradient = FloatBuffer(count: n)
        let caller = pthread_self()
        var reports: [Int] = [], step = 0
        let update = ParallelAdamW(optimizer: AdamW(layout: layout, config: OptimizerConfig(), owned: owned), parameters: params.base,
                                   gradient: gradient.base) { range in
            reports.append(range)
            XCTAssertTrue(pthread_equal(pthread_self(), caller) != 0, "range \(range) reported off the calling thread")
            let done = slices[range].filter { params.pointer[$0].bitPattern != expected[step][$0].bitPattern }.count
            XCTAssertEqual(done, 0, "step \(step + 1): range \(range) reported with \(done) of its \(slices[range].count) elements not yet updated")
        }
        let pool = WorkerPool(count: 2)
        for (s, g) in gradients.enumerated() {
            step = s
            _ = gradient.pointer.update(fromContentsOf: g)
            update.update(lr: 1e-3, gradScale: 0.25, threads: pool)
            XCTAssertEqual(reports, Array(slices.indices), "step \(s + 1)")
            reports = []
            XCTAssertEqual(zip(params.array, expected[s]).filter { $0.bitPattern != $1.bitPattern }.count, 0, "step \(s + 1): bits")
        }
    }
}
