// The one bf16 rounding (CBFloat16's goml_bfloat16.h: nearest, ties to even, a NaN stays a NaN)
// on the values where roundings differ: ties, subnormals, infinities, NaNs, the largest finite
// float, values either side of a rounding boundary; and the vectorised copies of it (GomlCore's
// SIMD8 roundToBFloat16, CBF16's AVX-512 packing) against it, bit for bit.

import CBF16
import CBFloat16
import GomlCore
import XCTest

final class BFloat16Tests: XCTestCase {
    /// (float32 bits, its bf16 under goml_bf16_from_float).
    static let cases: [(UInt32, UInt16)] = [
        (0x0000_0000, 0x0000), (0x8000_0000, 0x8000),           // ±0
        (0x3F80_0000, 0x3F80), (0xBF80_0000, 0xBF80),           // ±1, exact
        (0x3F80_8000, 0x3F80), (0x3F81_8000, 0x3F82),           // ties: to the even neighbour
        (0xBF80_8000, 0xBF80), (0xBF81_8000, 0xBF82),
        (0x3F80_7FFF, 0x3F80), (0x3F80_8001, 0x3F81),           // just below, just above a boundary
        (0x3F81_7FFF, 0x3F81), (0x3FFF_7FFF, 0x3FFF), (0x3FFF_8000, 0x4000),   // a carry into the exponent
        (0x3EAA_AAAB, 0x3EAB), (0x4049_0FDB, 0x4049),           // 1/3, π
        (0x0000_0001, 0x0000), (0x8000_0001, 0x8000),           // smallest subnormals
        (0x0000_8000, 0x0000), (0x0001_8000, 0x0002),           // subnormal ties
        (0x0000_7FFF, 0x0000), (0x0000_8001, 0x0001),
        (0x007F_FFFF, 0x0080), (0x0080_0000, 0x0080),           // largest subnormal rounds to the smallest normal
        (0x7F7F_0000, 0x7F7F), (0x7F7F_7FFF, 0x7F7F),           // largest bf16; just below its boundary
        (0x7F7F_8000, 0x7F80), (0x7F7F_FFFF, 0x7F80),           // a tie and the largest finite float overflow to inf
        (0xFF7F_FFFF, 0xFF80),
        (0x7F80_0000, 0x7F80), (0xFF80_0000, 0xFF80),           // ±inf
        (0x7FC0_0000, 0x7FC0), (0xFFC0_0000, 0xFFC0),           // quiet NaNs
        (0x7F80_0001, 0x7FC0), (0x7F80_8000, 0x7FC0),           // signalling NaNs: quieted, not rounded to inf
        (0x7FFF_FFFF, 0x7FFF), (0xFFFF_FFFF, 0xFFFF),           // all-ones payloads: no carry into the sign
    ]

    func testFromFloatRoundsToNearestEvenAndKeepsNaN() {
        for (bits, expected) in Self.cases {
            let rounded = goml_bf16_from_float(Float(bitPattern: bits))
            XCTAssertEqual(rounded, expected, "0x\(String(bits, radix: 16)) → 0x\(String(rounded, radix: 16))")
            XCTAssertEqual(goml_bf16_to_float(rounded).bitPattern, UInt32(rounded) << 16)
        }
    }

    /// The table's values, then bit patterns of every kind (a count that leaves a partial chunk).
    static func values() -> [Float] {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        let spread = (0..<4099).map { _ -> Float in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(bitPattern: UInt32(truncatingIfNeeded: state >> 32))
        }
        return cases.map { Float(bitPattern: $0.0) } + spread
    }

    func testRoundToBFloat16MatchesTheHeader() {
        let values = Self.values()
        var rounded = values
        rounded.withUnsafeMutableBufferPointer { roundToBFloat16($0) }
        XCTAssertTrue(values.contains { $0.isNaN })
        for (x, r) in zip(values, rounded) {
            let expected = goml_bf16_to_float(goml_bf16_from_float(x))
            XCTAssertEqual(r.bitPattern, expected.bitPattern, "0x\(String(x.bitPattern, radix: 16))")
            if x.isNaN { XCTAssertTrue(r.isNaN, "NaN 0x\(String(x.bitPattern, radix: 16)) → 0x\(String(r.bitPattern, radix: 16))") }
        }
    }

    /// CBF16's AVX-512 rounding (16 at a time, then the scalar tail) gives the header's bits.
    func testBF16PackingRoundingMatchesTheHeader() throws {
        guard OneDNN.hasBF16Products else { throw XCTSkip("CBF16 needs AVX-512; oneDNN reports \(OneDNN.isaName)") }
        let values = Self.values()
        var words = [UInt16](repeating: 0, count: values.count)
        values.withUnsafeBufferPointer { x in words.withUnsafeMutableBufferPointer { goml_bf16_round($0.baseAddress!, x.baseAddress!, x.count) } }
        for (x, w) in zip(values, words) { XCTAssertEqual(w, goml_bf16_from_float(x), "0x\(String(x.bitPattern, radix: 16))") }
    }

    /// A NaN operand makes NaN products through every packing path (vector panels and scalar
    /// edges, each transposition): an all-ones payload rounded as a number carries into -0.
    func testANaNOperandGivesNaNProducts() throws {
        guard OneDNN.hasBF16Products else { throw XCTSkip("bf16 products need AVX-512; oneDNN reports \(OneDNN.isaName)") }
        let products = BF16Products()
        let nan = Float(bitPattern: 0x7FFF_FFFF)
        for (m, n, k) in [(8, 32, 16), (3, 5, 3)] {
            for transA in [false, true] {
                for transB in [false, true] {
                    var a = [Float](repeating: 0.5, count: m * k), b = [Float](repeating: 0.25, count: k * n)
                    a[0] = nan   // op(A)[0][0] either way
                    b[0] = nan   // op(B)[0][0] either way
                    var c = [Float](repeating: 0, count: m * n)
                    products.product(transA, transB, m: m, n: n, k: k, alpha: 1, a, lda: transA ? m : k, b, ldb: transB ? k : n,
                                     beta: 0, &c, ldc: n)
                    for i in 0..<m {
                        for j in 0..<n {
                            // Row 0 reads op(A)'s NaN, column 0 op(B)'s; no other entry reads either.
                            XCTAssertEqual(c[i * n + j].isNaN, i == 0 || j == 0, "m \(m) n \(n) k \(k) transA \(transA) transB \(transB) c[\(i)][\(j)]")
                        }
                    }
                }
            }
        }
    }
}
