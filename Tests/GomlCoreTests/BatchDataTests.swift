// The pure pieces of SPEC that feed a step its data: jumped generators, every rank's share of
// the batch, validation offsets, the 90/10 split, and corpus pieces read as one text.

import Foundation
@testable import GomlCore
import XCTest

final class BatchDataTests: XCTestCase {
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
}
