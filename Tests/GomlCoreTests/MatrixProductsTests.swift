// The bf16 product against its definition: operands rounded to bfloat16 (nearest even), exact
// products summed in double, then alpha·sum + beta·C. Every transposition, padded leading
// dimensions, edges that fill no register tile, beta 0 and 1, and operands packed once.

import Foundation
import GomlCore
import XCTest

final class MatrixProductsTests: XCTestCase {
    /// BF16Products cannot be made without bf16 units: skip, naming what this CPU lacks.
    func requireNativeBF16() throws {
        guard OneDNN.hasNativeBF16 else {
            throw XCTSkip("needs AVX512_BF16 (native bf16 dot products); oneDNN reports \(OneDNN.isaName) on this CPU")
        }
    }

    func roundedToBFloat16(_ x: Float) -> Double {
        let bits = x.bitPattern
        return Double(Float(bitPattern: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) & 0xFFFF_0000))
    }

    func testBF16ProductsEqualRoundedOperandsSummedExactly() throws {
        try requireNativeBF16()
        let products = BF16Products()
        let shapes = [(37, 45, 19), (1, 70, 33), (16, 32, 16), (64, 96, 80), (9, 33, 2), (100, 130, 250)]
        for (m, n, k) in shapes {
            for (transA, transB) in [(false, false), (true, false), (false, true), (true, true)] {
                for (alpha, beta) in [(Float(1), Float(0)), (Float(0.7), Float(1))] {
                    let lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 5, ldc = n + 2
                    let a = (0..<(lda * (transA ? k : m))).map { Float(sin(Double($0) * 0.37)) }
                    let b = (0..<(ldb * (transB ? n : k))).map { Float(cos(Double($0) * 0.11)) }
                    let start = (0..<(ldc * m)).map { Float($0) * 0.5 }
                    var c = start
                    a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
                        products.product(transA, transB, m: m, n: n, k: k, alpha: alpha, ap.baseAddress!, lda: lda,
                                         bp.baseAddress!, ldb: ldb, beta: beta, cp.baseAddress!, ldc: ldc)
                    } } }
                    var worst = 0.0
                    for i in 0..<m {
                        for j in 0..<n {
                            var sum = 0.0
                            for p in 0..<k {
                                sum += roundedToBFloat16(transA ? a[p * lda + i] : a[i * lda + p])
                                    * roundedToBFloat16(transB ? b[j * ldb + p] : b[p * ldb + j])
                            }
                            let want = Double(alpha) * sum + Double(beta) * Double(start[i * ldc + j])
                            worst = max(worst, abs(want - Double(c[i * ldc + j])) / (1 + abs(want)))
                        }
                        // Columns past n belong to someone else: untouched.
                        for j in n..<ldc { XCTAssertEqual(c[i * ldc + j], start[i * ldc + j]) }
                    }
                    // float32 accumulation of k exact bf16 products: a few float32 ulps.
                    XCTAssertLessThan(worst, 1e-5, "m \(m) n \(n) k \(k) transA \(transA) transB \(transB) beta \(beta)")
                }
            }
        }
    }

    func testOperandsHeldConstantGiveTheSameProducts() throws {
        try requireNativeBF16()
        let (m, n, k) = (3, 70, 45)
        let a = (0..<(m * k)).map { Float(sin(Double($0))) }, w = (0..<(n * k)).map { Float(cos(Double($0) * 0.3)) }
        var fresh = [Float](repeating: 0, count: m * n), held = fresh
        let plain = BF16Products(), prepared = BF16Products()
        a.withUnsafeBufferPointer { ap in w.withUnsafeBufferPointer { wp in
            prepared.holdConstant(true, k: k, n: n, wp.baseAddress!, ldb: k)
            fresh.withUnsafeMutableBufferPointer {
                plain.product(false, true, m: m, n: n, k: k, alpha: 1, ap.baseAddress!, lda: k, wp.baseAddress!, ldb: k, beta: 0, $0.baseAddress!, ldc: n)
            }
            held.withUnsafeMutableBufferPointer {
                prepared.product(false, true, m: m, n: n, k: k, alpha: 1, ap.baseAddress!, lda: k, wp.baseAddress!, ldb: k, beta: 0, $0.baseAddress!, ldc: n)
            }
        } }
        XCTAssertEqual(fresh, held)
        XCTAssertNotEqual(fresh, [Float](repeating: 0, count: m * n))
    }
}
