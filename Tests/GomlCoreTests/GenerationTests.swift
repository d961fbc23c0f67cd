// GenerationTests: the KV-cache decoder against the full forward, sampling against its
// definition, and the generator's determinism, truncation and windowing.
// Expected values come from the full Transformer forward or from the sampling maths, never typed in.

import XCTest
@testable import GomlCore

final class GenerationTests: XCTestCase {
    /// A small random model with logits far from flat (init std 0.3).
    private func randomModel(_ kind: FFNKind = .swiglu, vocab: Int = 256, seed: UInt64 = 11, seqLen: Int = 16) -> (ModelConfig, [Float]) {
        let config = ModelConfig(vocab: vocab, dim: 32, layers: 2, heads: 4, ffn: 64, seqLen: seqLen, ffnKind: kind)
        let layout = ParameterLayout(config)
        var rng = Xoshiro256(seed: seed)
        var params = [Float](repeating: 0, count: layout.count)
        params.withUnsafeMutableBufferPointer { layout.initialise($0, rng: &rng, std: 0.3) }
        for t in layout.tensors where !t.isMatrix {   // norms away from 1/0 so they matter too
            for i in t.range { params[i] += Float(0.2 * rng.nextGaussian()) }
        }
        return (config, params)
    }

    private func generate(_ generator: TextGenerator, prompt: [UInt8], count: Int, options: SamplingOptions,
                          seed: UInt64, useCache: Bool = true) throws -> (bytes: [UInt8], result: GenerationResult) {
        var bytes: [UInt8] = []
        let result = try generator.generate(prompt: prompt, count: count, options: options, seed: seed,
                                            useCache: useCache) { bytes.append($0) }
        return (bytes, result)
    }

    private func draw(_ logits: [Float], _ options: SamplingOptions, seed: UInt64) -> Int32 {
        var rng = Xoshiro256(seed: seed)
        var scratch = SamplingScratch(vocab: logits.count)
        return logits.withUnsafeBufferPointer { sampleToken(logits: $0, options: options, rng: &rng, scratch: &scratch) }
    }

    private func frequencies(_ logits: [Float], _ options: SamplingOptions, draws: Int = 60_000) -> [Double] {
        var rng = Xoshiro256(seed: 5)
        var scratch = SamplingScratch(vocab: logits.count)
        var counts = [Int](repeating: 0, count: logits.count)
        logits.withUnsafeBufferPointer { buffer in
            for _ in 0..<draws {
                counts[Int(sampleToken(logits: buffer, options: options, rng: &rng, scratch: &scratch))] += 1
            }
        }
        return counts.map { Double($0) / Double(draws) }
    }

    private func argmax(_ row: ArraySlice<Float>) -> Int {
        row.indices.reduce(row.startIndex) { row[$1] > row[$0] ? $1 : $0 }
    }

    // MARK: - Decoder

    func testDecoderMatchesFullForwardAtEveryPosition() {
        for kind in FFNKind.allCases {
            // Over two attention blocks: decoding meets full, diagonal and partial key blocks too.
            let (config, params) = randomModel(kind, seqLen: 2 * attentionBlock + 21)
            let T = config.seqLen, V = config.vocab
            let model = Transformer(config: config, batch: 1)
            var rng = Xoshiro256(seed: 3)
            for t in 0..<T { model.tokens[t] = Int32(rng.nextBelow(V)) }
            params.withUnsafeBufferPointer { model.forward($0.baseAddress!) }

            let decoder = KVCacheDecoder(config: config, parameters: params)
            var worst: Float = 0, largest: Float = 0
            for t in 0..<T {
                XCTAssertEqual(decoder.position, t)
                let logits = decoder.step(token: model.tokens[t])
                for v in 0..<V {
                    let expected = model.logits[t * V + v]
                    worst = max(worst, abs(logits[v] - expected))
                    largest = max(largest, abs(expected))
                }
            }
            print("decoder vs full forward (\(kind)): max |Δlogit| \(worst), max |logit| \(largest), ratio \(worst / largest)")
            XCTAssertGreaterThan(largest, 1, "logits should not be flat")
            XCTAssertLessThanOrEqual(worst, 1e-5 * largest)

            // After reset the decoder reproduces position 0.
            decoder.reset()
            XCTAssertEqual(decoder.position, 0)
            let again = decoder.step(token: model.tokens[0])
            for v in 0..<V { XCTAssertLessThanOrEqual(abs(again[v] - model.logits[v]), 1e-5 * largest) }
        }
    }

    // MARK: - Sampling

    func testGreedyTakesArgmaxWithLowestIndexOnTies() {
        XCTAssertEqual(draw([0.5, 2, -1, 2], .greedy, seed: 1), 1)
        XCTAssertEqual(draw([3, 3, 3], .greedy, seed: 1), 0)
        XCTAssertEqual(draw([3, 3, 3], SamplingOptions(temperature: 1, topK: 1), seed: 1), 0)
    }

    func testTopKOneAndTinyTopPEqualGreedy() {
        var rng = Xoshiro256(seed: 9)
        for trial in 0..<200 {
            let logits = (0..<64).map { _ in Float(rng.nextGaussian()) }
            let greedy = draw(logits, .greedy, seed: 0)
            XCTAssertEqual(draw(logits, SamplingOptions(temperature: 1, topK: 1), seed: UInt64(trial)), greedy)
            XCTAssertEqual(draw(logits, SamplingOptions(temperature: 1.5, topP: 1e-6), seed: UInt64(trial)), greedy)
        }
    }

    func testSamplingFrequenciesMatchSoftmax() {
        let logits: [Float] = [0, log(2), log(3)]   // probabilities 1/6, 2/6, 3/6
        func check(_ observed: [Double], _ expected: [Double], _ label: String) {
            print("\(label): observed \(observed.map { ($0 * 1000).rounded() / 1000 }) expected \(expected)")
            for (o, e) in zip(observed, expected) { XCTAssertEqual(o, e, accuracy: 0.01, label) }
        }
        check(frequencies(logits, SamplingOptions()), [1.0 / 6, 2.0 / 6, 3.0 / 6], "plain")
        // Temperature ½ squares the odds: 1 : 4 : 9.
        check(frequencies(logits, SamplingOptions(temperature: 0.5)), [1.0 / 14, 4.0 / 14, 9.0 / 14], "temperature 0.5")
        // Top-k 2 keeps the two largest, renormalised to 0.4 / 0.6; top-p 0.6 keeps the same two (3/6 < 0.6 ≤ 5/6).
        let topTwo = [0, 0.4, 0.6]
        let topK = frequencies(logits, SamplingOptions(topK: 2))
        XCTAssertEqual(topK[0], 0, "top-k 2 must never draw the smallest")
        check(topK, topTwo, "top-k 2")
        let topP = frequencies(logits, SamplingOptions(topP: 0.6))
        XCTAssertEqual(topP[0], 0, "top-p 0.6 must never draw the smallest")
        check(topP, topTwo, "top-p 0.6")
    }

    func testSamplingIsDeterministicForAnRngState() {
        let logits: [Float] = (0..<32).map { Float($0 % 7) * 0.3 }
        let options = SamplingOptions(temperature: 0.9, topK: 20, topP: 0.9)
        XCTAssertEqual((0..<50).map { draw(logits, options, seed: $0) }, (0..<50).map { draw(logits, options, seed: $0) })
        XCTAssertGreaterThan(Set((0..<50).map { draw(logits, options, seed: $0) }).count, 1)
    }

    func testInvalidOptionsAreRejected() {
        XCTAssertThrowsError(try SamplingOptions(temperature: -1).validate())
        XCTAssertThrowsError(try SamplingOptions(topK: -1).validate())
        XCTAssertThrowsError(try SamplingOptions(topP: 0).validate())
        XCTAssertThrowsError(try SamplingOptions(topP: 1.5).validate())
        XCTAssertNoThrow(try SamplingOptions(temperature: 0.7, topK: 40, topP: 0.9).validate())
    }

    // MARK: - Generator

    func testSameSeedSameBytesDifferentSeedDifferentBytes() throws {
        let (config, params) = randomModel()
        let generator = try TextGenerator(config: config, parameters: params)
        let options = SamplingOptions(temperature: 1, topK: 50, topP: 0.95)
        let prompt = Array("hello".utf8)
        let first = try generate(generator, prompt: prompt, count: 12, options: options, seed: 42).bytes
        let second = try generate(generator, prompt: prompt, count: 12, options: options, seed: 42).bytes
        let other = try generate(generator, prompt: prompt, count: 12, options: options, seed: 43).bytes
        XCTAssertEqual(first.count, 12)
        XCTAssertEqual(first, second)
        XCTAssertNotEqual(first, other)
    }

    func testGreedyWithAndWithoutCacheFollowTheFullForwardArgmax() throws {
        for kind in FFNKind.allCases {
            let (config, params) = randomModel(kind)
            let generator = try TextGenerator(config: config, parameters: params)
            let prompt = Array("abc".utf8)
            let cached = try generate(generator, prompt: prompt, count: 10, options: .greedy, seed: 1).bytes
            let uncached = try generate(generator, prompt: prompt, count: 10, options: .greedy, seed: 2, useCache: false).bytes
            XCTAssertEqual(cached, uncached, "\(kind)")

            // Independently: feed prompt + generated bytes through one full forward; each generated
            // byte is the argmax of the row before it.
            let model = Transformer(config: config, batch: 1)
            let sequence = prompt + cached
            for t in 0..<(sequence.count - 1) { model.tokens[t] = Int32(sequence[t]) }
            params.withUnsafeBufferPointer { model.forward($0.baseAddress!) }
            let logits = Array(model.logits), V = config.vocab
            for (i, byte) in cached.enumerated() {
                let row = prompt.count - 1 + i
                XCTAssertEqual(argmax(logits[(row * V)..<((row + 1) * V)]) - row * V, Int(byte), "\(kind) byte \(i)")
            }
        }
    }

    func testTopKOneAndTinyTopPGenerateTheGreedyBytes() throws {
        let (config, params) = randomModel()
        let generator = try TextGenerator(config: config, parameters: params)
        let prompt = Array("xyz".utf8)
        let greedy = try generate(generator, prompt: prompt, count: 24, options: .greedy, seed: 0).bytes
        XCTAssertEqual(try generate(generator, prompt: prompt, count: 24, options: SamplingOptions(topK: 1), seed: 8).bytes, greedy)
        XCTAssertEqual(try generate(generator, prompt: prompt, count: 24, options: SamplingOptions(topP: 1e-6), seed: 9).bytes, greedy)
    }

    func testLongPromptKeepsItsLastSeqLenBytes() throws {
        let (config, params) = randomModel()
        let generator = try TextGenerator(config: config, parameters: params)
        let prompt = (0..<(config.seqLen + 5)).map { UInt8(truncatingIfNeeded: $0 * 37 + 1) }
        let options = SamplingOptions(temperature: 0.8)
        let long = try generate(generator, prompt: prompt, count: 8, options: options, seed: 4)
        let tail = try generate(generator, prompt: Array(prompt.suffix(config.seqLen)), count: 8, options: options, seed: 4)
        XCTAssertEqual(long.result.truncatedPromptBytes, 5)
        XCTAssertEqual(tail.result.truncatedPromptBytes, 0)
        XCTAssertEqual(long.bytes, tail.bytes)
    }

    func testGenerationPastSeqLenWindowsDeterministically() throws {
        for kind in FFNKind.allCases {
            let (config, params) = randomModel(kind)
            let generator = try TextGenerator(config: config, parameters: params)
            let count = 3 * config.seqLen + 3
            for options in [SamplingOptions.greedy, SamplingOptions(temperature: 0.8, topK: 40, topP: 0.95)] {
                let cached = try generate(generator, prompt: Array("window".utf8), count: count, options: options, seed: 21)
                let repeated = try generate(generator, prompt: Array("window".utf8), count: count, options: options, seed: 21)
                let uncached = try generate(generator, prompt: Array("window".utf8), count: count, options: options, seed: 21,
                                            useCache: false)
                XCTAssertEqual(cached.bytes.count, count)
                XCTAssertGreaterThan(cached.result.contextRefills, 0)
                XCTAssertEqual(cached.bytes, repeated.bytes)
                XCTAssertEqual(cached.bytes, uncached.bytes, "\(kind) \(options)")
                XCTAssertEqual(cached.result, uncached.result)
            }
        }
    }

    func testRefillKeepsTheLastHalfWindow() throws {
        let (config, params) = randomModel()
        let generator = try TextGenerator(config: config, parameters: params)
        let prompt = Array("window".utf8), T = config.seqLen, count = 2 * T
        let full = try generate(generator, prompt: prompt, count: count, options: .greedy, seed: 0)
        XCTAssertEqual(full.result.contextRefills, 3)   // at generated bytes 10, 18, 26
        // The first refill happens when generated byte `overflow` would make the context T + 1 long;
        // from then on the model sees only the last T/2 tokens, so greedy continues as from that window.
        let overflow = T - prompt.count
        let window = Array((prompt + full.bytes[...overflow]).suffix(T / 2))
        let resumed = try generate(generator, prompt: window, count: count - overflow - 1, options: .greedy, seed: 0)
        XCTAssertEqual(Array(full.bytes[(overflow + 1)...]), resumed.bytes)
        XCTAssertEqual(resumed.result.contextRefills, 2)
    }

    func testEmptyPromptStartsFromNewline() throws {
        let (config, params) = randomModel()
        let generator = try TextGenerator(config: config, parameters: params)
        let options = SamplingOptions(temperature: 1)
        XCTAssertEqual(try generate(generator, prompt: [], count: 10, options: options, seed: 6).bytes,
                       try generate(generator, prompt: [10], count: 10, options: options, seed: 6).bytes)
    }

    func testPromptBytesOutsideTheVocabularyAreNamed() throws {
        let (config, params) = randomModel(vocab: 128)
        let generator = try TextGenerator(config: config, parameters: params)
        XCTAssertThrowsError(try generate(generator, prompt: [65, 200, 66], count: 1, options: .greedy, seed: 0)) { error in
            XCTAssertTrue("\(error)".contains("200"), "\(error)")
        }
        let (bytes, _) = try generate(generator, prompt: [0, 127, 65], count: 20, options: SamplingOptions(), seed: 0)
        XCTAssertTrue(bytes.allSatisfy { $0 < 128 })
    }
}
