// The bf16 product against its definition: operands rounded to bfloat16 (nearest even), exact
// products summed in double, then alpha·sum + beta·C. Every transposition, padded leading
// dimensions, edges that fill no register tile, beta 0 and 1, and operands packed once; the
// emulation (CPUs without AVX512_BF16) against vdpbf16ps's definition bit for bit, and against
// the native instruction where there is one; products split among threads against one thread.

import Foundation
import GomlCore
import XCTest

final class MatrixProductsTests: XCTestCase {
    /// BF16Products cannot be made without AVX-512: skip, naming what this CPU lacks.
    func requireBF16Products() throws {
        guard OneDNN.hasBF16Products else {
            throw XCTSkip("needs AVX-512 for bf16 products (native or emulated); oneDNN reports \(OneDNN.isaName) on this CPU")
        }
    }

    /// Native products where the CPU has them, and always the emulation.
    func everyKind() -> [BF16Products] {
        (OneDNN.hasNativeBF16 ? [BF16Products()] : []) + [BF16Products(emulated: true)]
    }

    func bfloat16Bits(_ x: Float) -> UInt32 { (x.bitPattern &+ 0x7FFF &+ ((x.bitPattern >> 16) & 1)) & 0xFFFF_0000 }

    /// c = a·bᵀ (a m×k, b n×k, row-major) through `products`.
    func product(_ products: BF16Products, _ a: [Float], _ b: [Float], m: Int, n: Int, k: Int) -> [Float] {
        var c = [Float](repeating: 0, count: m * n)
        a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
            products.product(false, true, m: m, n: n, k: k, alpha: 1, ap.baseAddress!, lda: k, bp.baseAddress!, ldb: k,
                             beta: 0, cp.baseAddress!, ldc: n)
        } } }
        return c
    }

    /// Operands of mixed signs and magnitudes, so that the order of additions shows in the last bits.
    func operands(_ count: Int, seed: Double) -> [Float] {
        (0..<count).map { Float(sin(Double($0) * seed) * exp(2 * cos(Double($0) * 0.7 * seed))) }
    }

    func testEmulatedDotProductsFollowTheDefinitionOfVdpbf16ps() throws {
        try requireBF16Products()
        let (m, n, k) = (9, 40, 37)
        let a = operands(m * k, seed: 0.37), b = operands(n * k, seed: 0.11)
        let c = product(BF16Products(emulated: true), a, b, m: m, n: n, k: k)
        // Intel SDM, VDPBF16PS: per pair, acc += odd·odd then acc += even·even, each one fused
        // multiply-add (the bf16 products are exact in float32); k odd pads the last pair with 0.
        for i in 0..<m {
            for j in 0..<n {
                var acc: Float = 0
                for p in stride(from: 0, to: k, by: 2) {
                    let value = { (x: [Float], row: Int, q: Int) -> Float in q < k ? Float(bitPattern: self.bfloat16Bits(x[row * k + q])) : 0 }
                    acc.addProduct(value(a, i, p + 1), value(b, j, p + 1))
                    acc.addProduct(value(a, i, p), value(b, j, p))
                }
                XCTAssertEqual(c[i * n + j].bitPattern, acc.bitPattern, "c[\(i)][\(j)]: \(c[i * n + j]) against \(acc)")
            }
        }
        // The order matters: summed even first, some element would differ.
        var evenFirst = c
        for i in 0..<m { for j in 0..<n {
            var acc: Float = 0
            for p in stride(from: 0, to: k - 1, by: 2) {
                acc.addProduct(Float(bitPattern: bfloat16Bits(a[i * k + p])), Float(bitPattern: bfloat16Bits(b[j * k + p])))
                acc.addProduct(Float(bitPattern: bfloat16Bits(a[i * k + p + 1])), Float(bitPattern: bfloat16Bits(b[j * k + p + 1])))
            }
            acc.addProduct(Float(bitPattern: bfloat16Bits(a[i * k + k - 1])), Float(bitPattern: bfloat16Bits(b[j * k + k - 1])))
            evenFirst[i * n + j] = acc
        } }
        XCTAssertNotEqual(evenFirst, c, "these operands do not tell the order of additions apart")
    }

    func testEmulatedProductsEqualTheNativeOnesBitForBit() throws {
        guard OneDNN.hasNativeBF16 else {
            throw XCTSkip("needs AVX512_BF16 to compare the emulation with; oneDNN reports \(OneDNN.isaName) on this CPU")
        }
        for (m, n, k) in [(9, 40, 37), (64, 96, 256), (100, 130, 250)] {
            let a = operands(m * k, seed: 0.37), b = operands(n * k, seed: 0.11)
            XCTAssertEqual(product(BF16Products(), a, b, m: m, n: n, k: k).map(\.bitPattern),
                           product(BF16Products(emulated: true), a, b, m: m, n: n, k: k).map(\.bitPattern), "m \(m) n \(n) k \(k)")
        }
    }

    func roundedToBFloat16(_ x: Float) -> Double {
        let bits = x.bitPattern
        return Double(Float(bitPattern: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) & 0xFFFF_0000))
    }

    func testBF16ProductsEqualRoundedOperandsSummedExactly() throws {
        try requireBF16Products()
        for products in everyKind() { try check(products) }
    }

    func check(_ products: BF16Products) throws {
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
                    XCTAssertLessThan(worst, 1e-5, "native \(products.native) m \(m) n \(n) k \(k) transA \(transA) transB \(transB) beta \(beta)")
                }
            }
        }
    }

    func testOperandsHeldConstantGiveTheSameProducts() throws {
        try requireBF16Products()
        for emulated in [false, true] where emulated || OneDNN.hasNativeBF16 { check(emulated: emulated) }
    }

    func check(emulated: Bool) {
        let (m, n, k) = (3, 70, 45)
        let a = (0..<(m * k)).map { Float(sin(Double($0))) }, w = (0..<(n * k)).map { Float(cos(Double($0) * 0.3)) }
        var fresh = [Float](repeating: 0, count: m * n), held = fresh
        let plain = BF16Products(emulated: emulated), prepared = BF16Products(emulated: emulated)
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

    /// op(A)·op(B) into a C with padded rows, beta 1 over a non-zero C, through `products`,
    /// the B operand held constant when `held`.
    func paddedProduct(_ products: BF16Products, m: Int, n: Int, k: Int, transA: Bool, transB: Bool, held: Bool) -> [Float] {
        let lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 5, ldc = n + 2
        let a = operands(lda * (transA ? k : m), seed: 0.37), b = operands(ldb * (transB ? n : k), seed: 0.11)
        var c = (0..<(ldc * m)).map { Float($0 % 7) * 0.5 }
        a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
            if held { products.holdConstant(transB, k: k, n: n, bp.baseAddress!, ldb: ldb) }
            products.product(transA, transB, m: m, n: n, k: k, alpha: 0.7, ap.baseAddress!, lda: lda, bp.baseAddress!, ldb: ldb,
                             beta: 1, cp.baseAddress!, ldc: ldc)
        } } }
        return c
    }

    func testProductsSplitAmongThreadsChangeNoBit() throws {
        try requireBF16Products()
        for emulated in [false, true] where emulated || OneDNN.hasNativeBF16 {
            let split = BF16Products(emulated: emulated, threads: 3)
            XCTAssertEqual(split.threads, 3)
            // One row (decoding: single tiles as units), a few row panels (tiles), many (whole
            // rows of tiles), edges in every dimension, and a held operand.
            let shapes = [(1, 2304, 768, false), (37, 300, 90, false), (200, 130, 251, false), (1, 700, 777, true), (45, 1000, 64, true)]
            for (m, n, k, held) in shapes {
                for (transA, transB) in [(false, false), (true, false), (false, true), (true, true)] {
                    let alone = paddedProduct(BF16Products(emulated: emulated), m: m, n: n, k: k, transA: transA, transB: transB, held: held)
                    let shared = paddedProduct(split, m: m, n: n, k: k, transA: transA, transB: transB, held: held)
                    XCTAssertEqual(shared.map(\.bitPattern), alone.map(\.bitPattern),
                                   "native \(!emulated) m \(m) n \(n) k \(k) transA \(transA) transB \(transB) held \(held)")
                }
            }
            // Every helper took part. How much each takes of one product depends on when it
            // wakes (the caller never waits for a sleeping one), so this is counted over all
            // of them: 40 products of 0.1–10 ms each, a helper waking in microseconds.
            XCTAssertTrue(split.helperUnits.allSatisfy { $0 > 0 }, "units taken by each helper: \(split.helperUnits)")
            // Too small to be worth waking a helper: the caller does it alone.
            let before = split.helperUnits
            _ = paddedProduct(split, m: 9, n: 40, k: 37, transA: false, transB: true, held: false)
            XCTAssertEqual(split.helperUnits, before)
        }
    }
}
