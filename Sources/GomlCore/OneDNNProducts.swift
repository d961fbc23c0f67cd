// OneDNNProducts: bfloat16 matrix products on oneDNN's matmul primitive (bf16 × bf16 → f32,
// accumulated in float32). One primitive per product shape, made on its first call (the first
// step) and reused; operands come from a registered bf16 mirror (the weights, converted by
// AdamW) or are rounded into this engine's scratch. Also: whether this CPU has bf16 units.

import CDNNL

/// Deliberate faults that a bf16 check must catch (hidden test flags).
public enum BF16Fault: String, Sendable, CaseIterable {
    /// Every product's left operand is handed to oneDNN as raw float32 bits, unconverted.
    case unconvertedOperand = "unconverted-operand"
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

    /// True when oneDNN has native bf16 dot products here (AVX512_BF16 or AMX): the ISA
    /// flags of avx512_core_bf16 are a subset of the effective ISA's.
    public static var hasNativeBF16: Bool {
        let bf16 = dnnl_cpu_isa_avx512_core_bf16.rawValue
        return dnnl_get_effective_cpu_isa().rawValue & bf16 == bf16
    }
}

public final class OneDNNProducts: MatrixProducts {
    private struct Shape: Hashable {
        let transA: Bool, transB: Bool, m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int
        let alphaBits: UInt32, accumulate: Bool
    }

    /// A primitive with its memory objects (data handles set per call) and its scratchpad.
    private final class Plan {
        let primitive: dnnl_primitive_t
        let a: dnnl_memory_t, b: dnnl_memory_t, c: dnnl_memory_t, scratchpad: dnnl_memory_t
        let scratchBuffer: UnsafeMutableRawPointer
        let arguments: UnsafeMutablePointer<dnnl_exec_arg_t>
        init(_ shape: Shape, engine: dnnl_engine_t) {
            func check(_ status: dnnl_status_t, _ what: String) {
                if status != dnnl_success { fatalError("oneDNN \(what) failed (status \(status.rawValue)) for \(shape)") }
            }
            func descriptor(_ rows: Int, _ cols: Int, _ strides: [Int64], _ type: dnnl_data_type_t) -> dnnl_memory_desc_t {
                var md = dnnl_memory_desc_t()
                check(dnnl_memory_desc_init_by_strides(&md, 2, [Int64(rows), Int64(cols)], type, strides), "memory descriptor")
                return md
            }
            var aDesc = descriptor(shape.m, shape.k, shape.transA ? [1, Int64(shape.lda)] : [Int64(shape.lda), 1], dnnl_bf16)
            var bDesc = descriptor(shape.k, shape.n, shape.transB ? [1, Int64(shape.ldb)] : [Int64(shape.ldb), 1], dnnl_bf16)
            var cDesc = descriptor(shape.m, shape.n, [Int64(shape.ldc), 1], dnnl_f32)
            var op = dnnl_matmul_desc_t()
            check(dnnl_matmul_desc_init(&op, &aDesc, &bDesc, nil, &cDesc), "matmul descriptor")
            var attributes: dnnl_primitive_attr_t?
            check(dnnl_primitive_attr_create(&attributes), "attributes")
            defer { dnnl_primitive_attr_destroy(attributes) }
            check(dnnl_primitive_attr_set_scratchpad_mode(attributes, dnnl_scratchpad_mode_user), "scratchpad mode")
            var alpha = Float(bitPattern: shape.alphaBits)
            if alpha != 1 { check(dnnl_primitive_attr_set_output_scales(attributes, 1, 0, &alpha), "output scale") }
            if shape.accumulate {
                var postOps: dnnl_post_ops_t?
                check(dnnl_post_ops_create(&postOps), "post-ops")
                defer { dnnl_post_ops_destroy(postOps) }
                check(dnnl_post_ops_append_sum(postOps, 1), "sum post-op")
                check(dnnl_primitive_attr_set_post_ops(attributes, postOps), "set post-ops")
            }
            var pd: dnnl_primitive_desc_t?
            check(dnnl_primitive_desc_create(&pd, &op, attributes, engine, nil), "matmul primitive descriptor")
            defer { dnnl_primitive_desc_destroy(pd) }
            let scratchDesc = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0)!
            scratchBuffer = .allocate(byteCount: max(64, dnnl_memory_desc_get_size(scratchDesc)), alignment: 64)
            var made: dnnl_primitive_t?
            check(dnnl_primitive_create(&made, pd), "matmul primitive")
            primitive = made!
            func memory(_ md: UnsafePointer<dnnl_memory_desc_t>, _ handle: UnsafeMutableRawPointer?) -> dnnl_memory_t {
                var m: dnnl_memory_t?
                check(dnnl_memory_create(&m, md, engine, handle), "memory")
                return m!
            }
            // DNNL_MEMORY_NONE: handles are set before each execution.
            a = memory(&aDesc, nil); b = memory(&bDesc, nil); c = memory(&cDesc, nil)
            scratchpad = memory(scratchDesc, scratchBuffer)
            arguments = .allocate(capacity: 4)
            arguments[0] = dnnl_exec_arg_t(arg: DNNL_ARG_SRC, memory: a)
            arguments[1] = dnnl_exec_arg_t(arg: DNNL_ARG_WEIGHTS, memory: b)
            arguments[2] = dnnl_exec_arg_t(arg: DNNL_ARG_DST, memory: c)
            arguments[3] = dnnl_exec_arg_t(arg: DNNL_ARG_SCRATCHPAD, memory: scratchpad)
        }
        deinit {
            for m in [a, b, c, scratchpad] { dnnl_memory_destroy(m) }
            dnnl_primitive_destroy(primitive)
            scratchBuffer.deallocate()
            arguments.deallocate()
        }
    }

    private struct Mirror { let start: UInt, end: UInt, bf16: UnsafePointer<UInt16> }

    private let threads: Int32
    private let fault: BF16Fault?
    private let engine: dnnl_engine_t, stream: dnnl_stream_t
    private var plans: [Shape: Plan] = [:]
    private var mirrors: [Mirror] = []
    private var scratchA = UnsafeMutableBufferPointer<UInt16>.allocate(capacity: 0)
    private var scratchB = UnsafeMutableBufferPointer<UInt16>.allocate(capacity: 0)

    /// Products run on `threads` OpenMP threads of the calling thread.
    public init(threads: Int = 1, fault: BF16Fault? = nil) {
        self.threads = Int32(max(1, threads))
        self.fault = fault
        var e: dnnl_engine_t?, s: dnnl_stream_t?
        // fatalError, not precondition: -Ounchecked neither evaluates nor checks the latter.
        if dnnl_engine_create(&e, dnnl_cpu, 0) != dnnl_success { fatalError("oneDNN: no CPU engine") }
        if dnnl_stream_create(&s, e, dnnl_stream_default_flags.rawValue) != dnnl_success { fatalError("oneDNN: no stream") }
        engine = e!; stream = s!
    }

    deinit {
        plans.removeAll()
        dnnl_stream_destroy(stream)
        dnnl_engine_destroy(engine)
        scratchA.deallocate(); scratchB.deallocate()
    }

    public func mirror(_ floats: ConstFloatPointer, count: Int, bf16: UnsafePointer<UInt16>) {
        let entry = Mirror(start: UInt(bitPattern: floats), end: UInt(bitPattern: floats + count), bf16: bf16)
        if let i = mirrors.firstIndex(where: { $0.bf16 == bf16 }) { mirrors[i] = entry } else { mirrors.append(entry) }
    }

    /// The bf16 version of a stored rows×cols operand at leading dimension ld: its mirror, or
    /// its rounding into `scratch` (same layout), which grows on first need only.
    private func bf16Operand(_ x: ConstFloatPointer, rows: Int, cols: Int, ld: Int,
                             scratch: inout UnsafeMutableBufferPointer<UInt16>) -> UnsafeMutableRawPointer {
        let address = UInt(bitPattern: x)
        for m in mirrors where address >= m.start && address < m.end {
            return UnsafeMutableRawPointer(mutating: m.bf16 + Int(address - m.start) / MemoryLayout<Float>.stride)
        }
        let extent = (rows - 1) * ld + cols
        if scratch.count < extent {
            scratch.deallocate()
            scratch = .allocate(capacity: extent)
        }
        let out = scratch.baseAddress!
        if ld == cols {
            convertToBFloat16(out, x, count: rows * cols)
        } else {
            for r in 0..<rows { convertToBFloat16(out + r * ld, x + r * ld, count: cols) }
        }
        return UnsafeMutableRawPointer(out)
    }

    public func product(_ transA: Bool, _ transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                        _ a: ConstFloatPointer, lda: Int, _ b: ConstFloatPointer, ldb: Int,
                        beta: Float, _ c: FloatPointer, ldc: Int) {
        precondition(beta == 0 || beta == 1, "bf16 products accumulate with beta 0 or 1 only")
        omp_set_num_threads(threads)
        let shape = Shape(transA: transA, transB: transB, m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc,
                          alphaBits: alpha.bitPattern, accumulate: beta == 1)
        let plan: Plan
        if let known = plans[shape] { plan = known } else { plan = Plan(shape, engine: engine); plans[shape] = plan }
        let aBF16 = fault == .unconvertedOperand ? UnsafeMutableRawPointer(mutating: a)
            : bf16Operand(a, rows: transA ? k : m, cols: transA ? m : k, ld: lda, scratch: &scratchA)
        let bBF16 = bf16Operand(b, rows: transB ? n : k, cols: transB ? k : n, ld: ldb, scratch: &scratchB)
        dnnl_memory_set_data_handle(plan.a, aBF16)
        dnnl_memory_set_data_handle(plan.b, bBF16)
        dnnl_memory_set_data_handle(plan.c, UnsafeMutableRawPointer(c))
        let status = dnnl_primitive_execute(plan.primitive, stream, 4, plan.arguments)
        if status != dnnl_success { fatalError("oneDNN matmul failed (status \(status.rawValue)) for \(shape)") }
        dnnl_stream_wait(stream)
    }
}
