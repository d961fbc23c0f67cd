// Finite differences for every kernel through the whole model: the gradient check passes, and
// catches a wrong gradient or a broken backward where it is wrong; backward overwriting its
// output equals accumulating into zeros; the vectorised exp is accurate.

import Foundation
@testable import GomlCore
import XCTest

final class KernelGradientTests: XCTestCase {
    /// GradientCheck's small model with random weights (std 0.3) and a random batch of 2.
    func randomModel(_ kind: FFNKind, seed: UInt64) -> (ParameterLayout, Transformer, [Float]) {
        let config = GradientCheck.smallConfig(kind)
        let layout = ParameterLayout(config)
        let model = Transformer(config: config, batch: 2)
        var rng = Xoshiro256(seed: seed)
        var params = [Float](repeating: 0, count: layout.count)
        params.withUnsafeMutableBufferPointer { layout.initialise($0, rng: &rng, std: 0.3) }
        for i in 0..<model.rows {
            model.tokens[i] = Int32(rng.nextBelow(config.vocab))
            model.targets[i] = Int32(rng.nextBelow(config.vocab))
        }
        return (layout, model, params)
    }

    func testGradientsMatchFiniteDifferencesForBothFFNKinds() {
        for kind in FFNKind.allCases {
            for r in GradientCheck.run(config: GradientCheck.smallConfig(kind)) {
                XCTAssertLessThanOrEqual(r.worstRelativeError, GradientCheck.tolerance, "\(kind) \(r.tensor)")
                XCTAssertGreaterThanOrEqual(r.probes, 2, r.tensor)
            }
        }
    }

    /// The check rejects a wrong gradient where it is wrong: block 0's W2 gradient doubled (as
    /// a kernel that accumulated its product twice would leave it) fails there, and only there.
    func testGradientCheckRejectsADoubledGradient() {
        var problem = GradientCheck.Problem(config: GradientCheck.smallConfig(.swiglu), batch: 2, seed: 7, std: 0.3)
        var grads = problem.analyticGradient()
        let w2 = problem.layout.layers[0].w2
        for i in w2.range { grads[i] *= 2 }
        let results = problem.check(grads)
        XCTAssertEqual(results.count, problem.layout.tensors.count)
        for r in results {
            if r.tensor == w2.name {
                XCTAssertGreaterThan(r.worstRelativeError, GradientCheck.tolerance, "a doubled \(r.tensor) gradient passed")
            } else {
                XCTAssertLessThanOrEqual(r.worstRelativeError, GradientCheck.tolerance, r.tensor)
            }
        }
    }

    /// Each deliberate backward fault fails the check on the tensors it makes wrong, and the
    /// tensors it leaves right (those between the loss and the fault) pass.
    func testGradientCheckCatchesEachBackwardFault() {
        for kind in FFNKind.allCases {
            let config = GradientCheck.smallConfig(kind), names = ParameterLayout(config).tensors.map(\.name)
            let lastBlockAttention = ["layers.1.attention.wq.weight", "layers.1.attention.wk.weight"]
            let betweenLossAndAttention = names.filter { $0.hasPrefix("layers.1.") && !$0.contains("attention") } + ["layers.1.attention.wv.weight", "layers.1.attention.wo.weight", "norm.weight", "norm.bias", "output.weight"]
            let expectations: [(BackwardFault, wrong: [String], right: [String])] = [
                (.layerNormWeight, names.filter { $0.hasSuffix("norm.weight") }, names.filter { !$0.hasSuffix("norm.weight") }),
                (.attentionDiagonal, lastBlockAttention, betweenLossAndAttention),
            ]
            for (fault, wrong, right) in expectations {
                let results = GradientCheck.run(config: config, backwardFault: fault)
                let worst = Dictionary(uniqueKeysWithValues: results.map { ($0.tensor, $0.worstRelativeError) })
                for name in wrong { XCTAssertGreaterThan(worst[name] ?? 0, GradientCheck.tolerance, "\(kind) \(fault): \(name) passed") }
                for name in right { XCTAssertLessThanOrEqual(worst[name] ?? .infinity, GradientCheck.tolerance, "\(kind) \(fault): \(name) failed") }
            }
        }
    }

    func testOverwritingBackwardEqualsAccumulatingIntoZeros() {
        for kind in FFNKind.allCases {
            let (layout, model, params) = randomModel(kind, seed: 11)
            var accumulated = [Float](repeating: 0, count: layout.count)
            var overwritten = [Float](repeating: .nan, count: layout.count)   // garbage that must not survive
            params.withUnsafeBufferPointer { p in
                model.forward(p.baseAddress!, gradScale: 0.01)
                accumulated.withUnsafeMutableBufferPointer { model.backward(p.baseAddress!, $0.baseAddress!) }
                overwritten.withUnsafeMutableBufferPointer { model.backward(p.baseAddress!, $0.baseAddress!, accumulate: false) }
            }
            XCTAssertEqual(overwritten.map(\.bitPattern), accumulated.map(\.bitPattern), "\(kind)")
        }
    }

    func testVectorExpIsAccurate() {
        var worst: Float = 0
        var x: Float = -80
        while x < 80 {
            let got = exp1(x), want = Float(Foundation.exp(Double(x)))
            worst = max(worst, abs(got - want) / want)
            x += 0.0137
        }
        XCTAssertLessThan(worst, 4e-7)
    }
}
