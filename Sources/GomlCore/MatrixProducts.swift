// MatrixProducts: the one seam every matrix product in the model goes through.
// C[m,n] = alpha·op(A)·op(B) + beta·C, row-major, transposition by flags, never by copies.
// OpenBLAS float32 (the reference path) and oneDNN bfloat16 (OneDNNProducts.swift) sit behind it.

import CBLAS

public protocol MatrixProducts: AnyObject {
    func product(_ transA: Bool, _ transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                 _ a: ConstFloatPointer, lda: Int, _ b: ConstFloatPointer, ldb: Int,
                 beta: Float, _ c: FloatPointer, ldc: Int)

    /// Declares that `floats[0..<count]` has an up-to-date bfloat16 copy at `bf16` (same
    /// layout), so products can read it instead of converting. The caller keeps it current.
    func mirror(_ floats: ConstFloatPointer, count: Int, bf16: UnsafePointer<UInt16>)
}

/// OpenBLAS sgemm: the float32 reference path.
public final class OpenBLASProducts: MatrixProducts {
    public init() {}

    @inline(__always)
    public func product(_ transA: Bool, _ transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                        _ a: ConstFloatPointer, lda: Int, _ b: ConstFloatPointer, ldb: Int,
                        beta: Float, _ c: FloatPointer, ldc: Int) {
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    public func mirror(_ floats: ConstFloatPointer, count: Int, bf16: UnsafePointer<UInt16>) {}
}

/// Which arithmetic the matrix products use.
public enum Precision: String, Codable, Sendable, CaseIterable {
    /// float32 operands (OpenBLAS): the reference.
    case fp32
    /// bfloat16 operands, float32 accumulation and results (oneDNN matmul).
    case bf16
}

/// The products a model of `precision` uses for its linear layers and for attention, run on
/// `threads` threads (oneDNN's; OpenBLAS's are process-wide, set by the caller).
/// Attention stays on float32: its per-head products are small (T×T×D) and strided, and
/// converting their operands costs more than bf16 saves (BENCHMARKS.md).
public func makeProducts(_ precision: Precision, threads: Int = 1, fault: BF16Fault? = nil)
    -> (linear: MatrixProducts, attention: MatrixProducts) {
    switch precision {
    case .fp32: return (OpenBLASProducts(), OpenBLASProducts())
    case .bf16: return (OneDNNProducts(threads: threads, fault: fault), OpenBLASProducts())
    }
}

/// bfloat16 of x, rounded to nearest even (NaN is not produced by the model's finite values).
@inline(__always) func bfloat16Bits(_ x: SIMD8<Float>) -> SIMD8<UInt16> {
    let bits = unsafeBitCast(x, to: SIMD8<UInt32>.self)
    let rounded = bits &+ (0x7FFF &+ ((bits &>> 16) & 1))
    return SIMD8<UInt16>(truncatingIfNeeded: rounded &>> 16)
}

/// out[i] = bf16(x[i]) for i in 0..<count.
public func convertToBFloat16(_ out: UnsafeMutablePointer<UInt16>, _ x: ConstFloatPointer, count: Int) {
    var i = 0
    while i + 8 <= count {
        UnsafeMutableRawPointer(out + i).storeBytes(of: bfloat16Bits(load(x + i)), as: SIMD8<UInt16>.self)
        i += 8
    }
    if i < count {
        let v = bfloat16Bits(load(x + i, count - i))
        for j in 0..<(count - i) { out[i + j] = v[j] }
    }
}

/// The float32 value of bfloat16 bits.
@inline(__always) public func floatFromBFloat16(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }
