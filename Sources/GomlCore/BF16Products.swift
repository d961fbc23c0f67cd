// BF16Products: bfloat16 matrix products with float32 accumulation on the CPU's AVX512_BF16
// dot products (CBF16's packed microkernel), or on their emulation where an AVX-512 CPU has
// none (same results, slower than float32: for runs that must match a bf16 run, never chosen
// by `auto`). With `threads` > 1 each product is split among that many cores (CBF16's team),
// as OpenBLAS splits sgemm: the bits do not depend on the count. Operands are rounded to bf16
// as they are packed, so no pass converts them separately; the packing workspaces grow on a
// shape's first call (the first step) and are reused, so a step allocates nothing. oneDNN
// tells whether this CPU has bf16 units or AVX-512 (and ONEDNN_MAX_CPU_ISA can deny them, as
// on an older CPU).

import CBF16
import CDNNL

/// Deliberate faults that a bf16 check must catch (hidden test flags).
public enum BF16Fault: String, Sendable, CaseIterable {
    /// Every product reads its left operand with a leading dimension one too small.
    case wrongLeadingDimension = "wrong-leading-dimension"
}

public enum OneDNN {
    /// The instruction set oneDNN dispatches to here (ONEDNN_MAX_CPU_ISA can lower it).
    public static var isaName: String {
        switch dnnl_get_effective_cpu_isa() {
        case dnnl_cpu_isa_avx512_core_amx: "avx512_core_amx"
        case dnnl_cpu_isa_avx512_core_bf16: "avx512_core_bf16"
        case dnnl_cpu_isa_avx512_core_vnni: "avx512_core_vnni"
        case dnnl_cpu_isa_avx512_core: "avx512_core"
        case dnnl_cpu_isa_avx2_vnni: "avx2_vnni"
        case dnnl_cpu_isa_avx2: "avx2"
        case let other: "isa 0x\(String(other.rawValue, radix: 16))"
        }
    }

    /// True when oneDNN reports native bf16 dot products here (AVX512_BF16, or AMX which
    /// implies it): the ISA flags of avx512_core_bf16 are a subset of the effective ISA's.
    public static var hasNativeBF16: Bool { has(dnnl_cpu_isa_avx512_core_bf16) }

    /// True when bf16 products can run here, natively or emulated (AVX-512 F, BW, VL, DQ).
    public static var hasBF16Products: Bool { has(dnnl_cpu_isa_avx512_core) }

    public static var hasAVX2: Bool { has(dnnl_cpu_isa_avx2) }

    private static func has(_ isa: dnnl_cpu_isa_t) -> Bool {
        dnnl_get_effective_cpu_isa().rawValue & isa.rawValue == isa.rawValue
    }
}

public final class BF16Products: MatrixProducts {
    private let fault: BF16Fault?
    /// The CPU's bf16 dot products, or their emulation (see CBF16).
    public let native: Bool
    private var packedA = UnsafeMutableBufferPointer<UInt16>.allocate(capacity: 1)
    private var packedB = UnsafeMutableBufferPointer<UInt16>.allocate(capacity: 1)

    /// Operands declared constant, packed once: decoding then reads bf16 weights, half the bytes.
    private struct HeldOperand {
        let b: ConstFloatPointer, transB: Bool, k: Int, n: Int, ldb: Int
        let packed: UnsafeMutableBufferPointer<UInt16>
    }
    private var held: [HeldOperand] = []
    /// The helper threads (nil: the caller alone).
    private let team: OpaquePointer?

    /// `emulated`: emulate the bf16 dot products even where the CPU has them (tests compare the two).
    /// `threads`: cores each product is split among (the caller and threads − 1 helpers).
    public init(fault: BF16Fault? = nil, emulated: Bool = false, threads: Int = 1) {
        // fatalError, not precondition: -Ounchecked neither evaluates nor checks the latter.
        if !OneDNN.hasBF16Products { fatalError("bf16 products need AVX-512; oneDNN reports \(OneDNN.isaName)") }
        self.fault = fault
        native = OneDNN.hasNativeBF16 && !emulated
        team = threads > 1 ? goml_bf16_team_create(Int32(threads)) : nil
    }

    deinit {
        goml_bf16_team_destroy(team)
        packedA.deallocate(); packedB.deallocate()
        for h in held { h.packed.deallocate() }
    }

    /// Cores each product is split among.
    public var threads: Int { Int(goml_bf16_team_threads(team)) }

    /// Units of work each helper thread has taken so far (threads − 1 counts).
    public var helperUnits: [Int] { (0..<threads - 1).map { Int(goml_bf16_team_helped(team, Int32($0))) } }

    public func holdConstant(_ transB: Bool, k: Int, n: Int, _ b: ConstFloatPointer, ldb: Int) {
        let packed = UnsafeMutableBufferPointer<UInt16>.allocate(capacity: goml_bf16_packed_b_count(k, n))
        goml_bf16_pack_b(packed.baseAddress!, transB ? 1 : 0, b, ldb, k, n)
        held.append(HeldOperand(b: b, transB: transB, k: k, n: n, ldb: ldb, packed: packed))
    }

    private static func ensure(_ buffer: inout UnsafeMutableBufferPointer<UInt16>, _ count: Int) {
        if buffer.count < count {
            buffer.deallocate()
            buffer = .allocate(capacity: count)
        }
    }

    public func product(_ transA: Bool, _ transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                        _ a: ConstFloatPointer, lda: Int, _ b: ConstFloatPointer, ldb: Int,
                        beta: Float, _ c: FloatPointer, ldc: Int) {
        Self.ensure(&packedA, goml_bf16_packed_a_count(m, k))
        let leadingA = fault == .wrongLeadingDimension ? lda - 1 : lda
        for h in held where h.b == b && h.transB == transB && h.k == k && h.n == n && h.ldb == ldb {
            goml_bf16_gemm_packed_b(team, native ? 1 : 0, transA ? 1 : 0, m, n, k, alpha, a, leadingA, h.packed.baseAddress!, beta, c, ldc,
                                    packedA.baseAddress!)
            return
        }
        Self.ensure(&packedB, goml_bf16_packed_b_count(k, n))
        goml_bf16_gemm(team, native ? 1 : 0, transA ? 1 : 0, transB ? 1 : 0, m, n, k, alpha, a, leadingA,
                       b, ldb, beta, c, ldc, packedA.baseAddress!, packedB.baseAddress!)
    }
}
