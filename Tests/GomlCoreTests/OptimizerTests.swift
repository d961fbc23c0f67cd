// AdamW split into per-thread parts: the same bits as one thread's update, clip included, for
// the whole layout and for a rank's owned slices; and how the parts cut each range. DiLoCo's
// outer Nesterov step against PyTorch's.

import Foundation
@testable import GomlCore
import XCTest

final class OptimizerTests: XCTestCase {
    /// Tiny's layout: matrices (decayed) and norm weights (not), so pieces cross both kinds.
    let layout = ParameterLayout(.tiny)

    func random(_ count: Int, scale: Double, rng: inout Xoshiro256) -> [Float] {
        (0..<count).map { _ in Float(rng.nextGaussian() * scale) }
    }

    /// Runs two AdamW steps with clipping active from the same random state, split into
    /// `parts` pieces run concurrently; returns parameters, m and v.
    func twoSteps(owned: [(parameters: Range<Int>, gradient: Int)], gradientCount: Int, parts: Int) -> [[Float]] {
        var rng = Xoshiro256(seed: 17)
        var params = random(layout.count, scale: 0.02, rng: &rng)
        let optimizer = AdamW(layout: layout, config: OptimizerConfig(), owned: owned)
        for _ in 0..<2 {
            // Large gradients: the global norm exceeds gradClip, so every element is scaled.
            let grads = random(gradientCount, scale: 3, rng: &rng)
            let scale = grads.withUnsafeBufferPointer { clipScale(norm: globalNorm($0), maxNorm: optimizer.config.gradClip) }
            XCTAssertLessThan(scale, 0.1, "clipping must be active")
            optimizer.beginUpdate(lr: 3e-3, gradScale: scale)
            params.withUnsafeMutableBufferPointer { p in
                grads.withUnsafeBufferPointer { g in
                    let (pBase, gBase) = (p.baseAddress!, g.baseAddress!)
                    DispatchQueue.concurrentPerform(iterations: parts) { part in
                        optimizer.updatePart(part, of: parts, pBase, grads: gBase)
                    }
                }
            }
        }
        return [params, Array(optimizer.m), Array(optimizer.v)]
    }

    func assertSameBits(_ a: [[Float]], _ b: [[Float]], _ message: String) {
        for (name, (x, y)) in zip(["parameters", "m", "v"], zip(a, b)) {
            let differing = zip(x, y).filter { $0.bitPattern != $1.bitPattern }.count
            XCTAssertEqual(differing, 0, "\(message): \(name) differs in \(differing) of \(x.count) elements")
        }
    }

    func testSplitUpdateHasTheBitsOfOneThreadsUpdate() {
        let whole = [(parameters: 0..<layout.count, gradient: 0)]
        let reference = twoSteps(owned: whole, gradientCount: layout.count, parts: 1)
        for parts in [2, 3, 7] {
            assertSameBits(twoSteps(owned: whole, gradientCount: layout.count, parts: parts), reference, "\(parts) parts")
        }
    }

    /// A rank's slices as the sharded strategy owns them: ranges cutting through tensors at odd
    /// offsets, visited out of layout order, each reading the gradient at its own offset.
    func testSplitUpdateOfOwnedSlicesHasTheBitsOfOneThreadsUpdate() {
        let n = layout.count
        let owned = [(parameters: (n / 2 + 5)..<(n - 3), gradient: n / 2 + 5), (parameters: 0..<0, gradient: 0),
                     (parameters: 7..<(n / 3 + 1), gradient: 7)]
        let reference = twoSteps(owned: owned, gradientCount: n, parts: 1)
        for parts in [2, 5] {
            assertSameBits(twoSteps(owned: owned, gradientCount: n, parts: parts), reference, "owned slices, \(parts) parts")
        }
        // The parameters outside the slices are untouched; those inside moved.
        var rng = Xoshiro256(seed: 17)
        let initial = random(n, scale: 0.02, rng: &rng)
        XCTAssertEqual(reference[0][n - 1].bitPattern, initial[n - 1].bitPattern)
        XCTAssertNotEqual(reference[0][8].bitPattern, initial[8].bitPattern)
    }

    func testPiecesCoverEachRangeInOrderCutAtCacheLines() {
        for range in [0..<0, 0..<5, 3..<1000, 17..<18, 100..<4196] {
            for parts in 1...6 {
                let pieces = (0..<parts).map { AdamW.piece($0, of: parts, range) }
                XCTAssertEqual(pieces.first?.lowerBound, range.lowerBound)
                XCTAssertEqual(pieces.last?.upperBound, range.upperBound)
                for (a, b) in zip(pieces, pieces.dropFirst()) {
                    XCTAssertEqual(a.upperBound, b.lowerBound, "\(range) in \(parts): contiguous")
                    XCTAssertTrue(a.upperBound == range.upperBound || a.upperBound % AdamW.partAlignment == 0,
                                  "\(range) in \(parts): cut at \(a.upperBound)")
                }
            }
        }
        // Balanced: no piece of a long range is more than a cache line longer than its share.
        let pieces = (0..<3).map { AdamW.piece($0, of: 3, 0..<30_000) }
        XCTAssertTrue(pieces.allSatisfy { abs($0.count - 10_000) <= AdamW.partAlignment }, "\(pieces)")
    }

    /// Two outer steps against PyTorch's SGD(nesterov=True) written out in double, on a length
    /// (37) that leaves a partial vector chunk; lr 1 and μ 0 replace θ by θ − g (plain averaging).
    func testNesterovSGDFollowsPyTorchsNesterov() {
        let n = 37, lr = 0.7, mu = 0.9
        var rng = Xoshiro256(seed: 5)
        let theta = (0..<n).map { _ in Float(rng.nextUnit() - 0.5) }
        let deltas = (0..<2).map { _ in (0..<n).map { _ in Float(rng.nextUnit() - 0.5) } }
        let sgd = NesterovSGD(count: n, lr: lr, momentum: mu)
        let params = UnsafeMutableBufferPointer<Float>.allocate(capacity: n)
        defer { params.deallocate() }
        _ = params.initialize(from: theta)
        var expected = theta.map(Double.init), buffer = [Double](repeating: 0, count: n)
        for delta in deltas {
            // The sum of two workers' Δ, averaged by the scale.
            let summed = delta.map { 2 * $0 }
            summed.withUnsafeBufferPointer { sgd.update(params, pseudoGradient: $0, gradScale: 0.5) }
            for i in 0..<n {
                let g = Double(delta[i])
                buffer[i] = mu * buffer[i] + g
                expected[i] -= lr * (g + mu * buffer[i])
            }
        }
        for i in 0..<n { XCTAssertEqual(Double(params[i]), expected[i], accuracy: 1e-6, "element \(i)") }
        let averaging = NesterovSGD(count: n, lr: 1, momentum: 0)
        _ = params.update(fromContentsOf: theta)
        deltas[0].withUnsafeBufferPointer { averaging.update(params, pseudoGradient: $0, gradScale: 1) }
        for i in 0..<n { XCTAssertEqual(params[i], theta[i] - deltas[0][i], "averaging, element \(i)") }
    }
}
