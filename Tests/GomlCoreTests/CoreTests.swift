// Finite differences for every kernel through the whole model, and the pure pieces of SPEC:
// schedule, sharding, validation offsets, config checks, the generator.

import Foundation
@testable import GomlCore
import XCTest

final class CoreTests: XCTestCase {
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

    /// Jumped streams: deterministic, apart from each other and from the unjumped one.
    func testJumpedGeneratorsGiveSeparateReproducibleStreams() {
        func stream(jumps: Int) -> [UInt64] {
            var rng = Xoshiro256(seed: 1337)
            for _ in 0..<jumps { rng.jump() }
            return (0..<8).map { _ in rng.next() }
        }
        XCTAssertEqual(stream(jumps: 1), stream(jumps: 1))
        XCTAssertNotEqual(stream(jumps: 0), stream(jumps: 1))
        XCTAssertNotEqual(stream(jumps: 1), stream(jumps: 2))
        XCTAssertTrue(Set(stream(jumps: 1)).isDisjoint(with: stream(jumps: 0)))
    }

    func testScheduleFollowsSpec() {
        let s = LearningRateSchedule(maxLR: 1e-3, minLR: 1e-4, warmup: 100, totalSteps: 2000)
        XCTAssertEqual(s.rate(atStep: 1), 1e-5, accuracy: 1e-15)
        XCTAssertEqual(s.rate(atStep: 50), 5e-4, accuracy: 1e-15)
        XCTAssertEqual(s.rate(atStep: 100), 1e-3, accuracy: 1e-15)
        XCTAssertEqual(s.rate(atStep: 1050), 1e-4 + 0.5 * 9e-4, accuracy: 1e-12)
        XCTAssertEqual(s.rate(atStep: 2000), 1e-4, accuracy: 1e-15)
        XCTAssertEqual(s.rate(atStep: 2500), 1e-4, accuracy: 1e-15)
    }

    func testRankShardsRebuildTheOneRankBatch() {
        for world in [1, 2, 4, 8] {
            let pieces = (0..<world).map { shard(batch: 16, rank: $0, worldSize: world) }
            XCTAssertEqual(pieces.flatMap { Array($0) }, Array(0..<16), "world \(world)")
        }
        var a = BatchSampler(seed: 9, batch: 8, seqLen: 64, dataCount: 1000)
        var b = a
        var x = [Int](repeating: 0, count: 8), y = x
        for _ in 0..<5 { a.next(into: &x); b.next(into: &y); XCTAssertEqual(x, y) }
        XCTAssertTrue(x.allSatisfy { (0..<(1000 - 64)).contains($0) })
    }

    func testValidationOffsetsAreSpecs() {
        let n = 111_540, T = 64, count = 600
        let offsets = validationOffsets(validationCount: n, seqLen: T, count: count)
        XCTAssertEqual(offsets.first, 0)
        XCTAssertEqual(offsets.last, n - T - 1)
        XCTAssertEqual(offsets[1], (n - T - 1) / (count - 1))
    }

    func testSplitIsNinetyTen() {
        let split = TextSplit(bytes: Array(repeating: 65, count: 1001))
        XCTAssertEqual(split.train.count, 900)
        XCTAssertEqual(split.validation.count, 101)
        XCTAssertThrowsError(try TextSplit(bytes: Array(repeating: 65, count: 300)).check(seqLen: 64))
    }

    /// Pieces read as their concatenation: every sequence, including those that cross one or
    /// more piece boundaries, and every split of it, matches the same bytes in one piece.
    func testPiecesReadAsTheirConcatenation() {
        var rng = Xoshiro256(seed: 3)
        let text = (0..<300).map { _ in UInt8(rng.nextBelow(256)) }
        let whole = ByteSource(copying: text)
        let cuts = [0, 1, 40, 41, 45, 130, 299, 300]   // pieces of 1, 39, 1, 4, 85, 169 and 1 bytes
        let parts = zip(cuts, cuts.dropFirst()).map { ByteSource(copying: Array(text[$0..<$1])) }
        let owner = PartsOwner(parts)
        let pieced = ByteSource(pieces: parts.flatMap(\.pieces), owner: owner)
        XCTAssertEqual(pieced.count, 300)
        XCTAssertEqual(pieced.bytes, text)
        let T = 8
        let tokens = UnsafeMutableBufferPointer<Int32>.allocate(capacity: 2 * T), targets = UnsafeMutableBufferPointer<Int32>.allocate(capacity: 2 * T)
        defer { tokens.deallocate(); targets.deallocate() }
        for offset in 0..<(300 - T) {
            fillSequence(tokens: tokens, targets: targets, row: 0, from: whole, offset: offset, seqLen: T)
            fillSequence(tokens: tokens, targets: targets, row: 1, from: pieced, offset: offset, seqLen: T)
            XCTAssertEqual(Array(tokens[0..<T]), Array(tokens[T...]), "tokens at \(offset)")
            XCTAssertEqual(Array(targets[0..<T]), Array(targets[T...]), "targets at \(offset)")
            XCTAssertEqual(Array(tokens[0..<T]), text[offset..<(offset + T)].map(Int32.init))
        }
        let split = TextSplit(corpus: pieced), reference = TextSplit(bytes: text)
        XCTAssertEqual(split.train.bytes, reference.train.bytes)
        XCTAssertEqual(split.validation.bytes, reference.validation.bytes)
        XCTAssertEqual(pieced.slice(38..<132).bytes, Array(text[38..<132]))
        // Released ranges are handed to the owner piece by piece.
        pieced.releasePages(offset: 39, count: 8)
        XCTAssertEqual(owner.released, [1, 1, 4, 2])
    }

    final class PartsOwner: ByteSourceOwner {
        let parts: [ByteSource]
        var released: [Int] = []
        init(_ parts: [ByteSource]) { self.parts = parts }
        func releasePages(around bytes: UnsafeRawBufferPointer) { released.append(bytes.count) }
    }

    func testInvalidConfigsAreRejectedWithTheirReason() {
        let cases: [(ModelConfig, String)] = [
            (ModelConfig(dim: 30, layers: 1, heads: 4, ffn: 8, seqLen: 8), "not divisible by heads"),
            (ModelConfig(dim: 12, layers: 1, heads: 4, ffn: 8, seqLen: 8), "is odd"),
            (ModelConfig(dim: 16, layers: 0, heads: 4, ffn: 8, seqLen: 8), "layers is 0"),
            (ModelConfig(dim: 16, layers: 1, heads: 4, ffn: 8, seqLen: 0), "seq-len is 0"),
        ]
        for (config, reason) in cases {
            XCTAssertThrowsError(try config.validate()) { XCTAssertTrue("\($0)".contains(reason), "\($0)") }
        }
        XCTAssertNoThrow(try ModelConfig.small.validate())
    }

    func testPresetsHaveTheAnchorsParameterCounts() {
        XCTAssertEqual(ParameterLayout(.tiny).count, 132_224)
        XCTAssertEqual(ParameterLayout(.nano).count, 858_368)
        XCTAssertEqual(ParameterLayout(.small).count, 10_823_424)
        XCTAssertEqual(ModelConfig.nano.flopsPerToken / 1e6, 5.33, accuracy: 0.01)
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
