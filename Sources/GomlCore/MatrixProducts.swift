// MatrixProducts: the one seam every matrix product in the model goes through.
// C[m,n] = alpha·op(A)·op(B) + beta·C, row-major, transposition by flags, never by copies.
// OpenBLAS float32 (the reference path) and bfloat16 (BF16Products.swift) sit behind it.

import CBLAS

public protocol MatrixProducts: AnyObject {
    func product(_ transA: Bool, _ transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                 _ a: ConstFloatPointer, lda: Int, _ b: ConstFloatPointer, ldb: Int,
                 beta: Float, _ c: FloatPointer, ldc: Int)

    /// Declares op(b) (k×n) constant while this object lives (inference weights), so products
    /// that read it may prepare it once.
    func holdConstant(_ transB: Bool, k: Int, n: Int, _ b: ConstFloatPointer, ldb: Int)

    /// Cores each product is split among.
    var threads: Int { get }
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

    public func holdConstant(_ transB: Bool, k: Int, n: Int, _ b: ConstFloatPointer, ldb: Int) {}

    /// OpenBLAS's thread count: one setting for the whole process.
    public var threads: Int { BLAS.threads }
}

/// Which arithmetic the matrix products use.
public enum Precision: String, Codable, Sendable, CaseIterable {
    /// float32 operands (OpenBLAS): the reference.
    case fp32
    /// bfloat16 operands, float32 accumulation and results (AVX512_BF16).
    case bf16
}

/// Where a model's products run: its linear layers, attention's per-head products, and the
/// attention scores q·kᵀ that feed the softmax.
public typealias ModelProducts = (linear: MatrixProducts, attention: MatrixProducts, scores: MatrixProducts)

/// The products of a model at `precision`. At bf16 the scores stay float32: rounded to bf16,
/// large scores (the clip fixture's weights) quadrupled the gradient-norm error; every other
/// product, attention's included, is bf16 (BENCHMARKS.md), split among `threads` cores
/// (float32 products take OpenBLAS's thread count instead).
public func makeProducts(_ precision: Precision, fault: BF16Fault? = nil, threads: Int = 1) -> ModelProducts {
    switch precision {
    case .fp32:
        let fp32 = OpenBLASProducts()
        return (fp32, fp32, fp32)
    case .bf16:
        let bf16 = BF16Products(fault: fault, threads: threads)
        return (bf16, bf16, OpenBLASProducts())
    }
}
