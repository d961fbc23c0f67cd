// Transformer: docs/model.md's model as one straight-line forward pass and its reverse.
// All activations for a fixed (batch, seqLen) are carved from one allocation made at init,
// so forward and backward allocate nothing. Parameters and gradients are flat buffers in
// ParameterLayout order, passed in by the caller. Matrix products go through `products`
// (MatrixProducts.swift): the model's arithmetic is the same code at every precision.

/// Saved activations of one transformer block, all [N = B·T rows].
struct BlockActivations {
    let ln1: FloatPointer, ln1Mean: FloatPointer, ln1Rstd: FloatPointer   // [N,C], [N], [N]
    let qkv: FloatPointer                                                 // [N,3C], q and k after RoPE
    let logSumExp: FloatPointer                                           // [B,H,T], attention's per-row softmax normaliser
    let attention: FloatPointer                                           // [N,C], heads concatenated
    let residualMid: FloatPointer                                         // [N,C], after the attention add
    let ln2: FloatPointer, ln2Mean: FloatPointer, ln2Rstd: FloatPointer   // [N,C], [N], [N]
    let u1: FloatPointer, u3: FloatPointer?                               // [N,F] pre-activation (u3: SwiGLU only)
    let gate: FloatPointer                                                // [N,F], input of W2

    /// Floats for `rows` rows: linear in T (attention keeps one number per row and head, no T×T).
    static func count(rows N: Int, config: ModelConfig) -> Int {
        7 * N * config.dim + 4 * N + config.heads * N + (config.ffnKind == .swiglu ? 3 : 2) * N * config.ffn
    }

    init(rows N: Int, config: ModelConfig, carve: (Int) -> FloatPointer) {
        let C = config.dim, F = config.ffn
        ln1 = carve(N * C); ln1Mean = carve(N); ln1Rstd = carve(N); qkv = carve(3 * N * C)
        logSumExp = carve(config.heads * N); attention = carve(N * C); residualMid = carve(N * C)
        ln2 = carve(N * C); ln2Mean = carve(N); ln2Rstd = carve(N)
        u1 = carve(N * F); u3 = config.ffnKind == .swiglu ? carve(N * F) : nil; gate = carve(N * F)
    }
}

/// docs/model.md's block for B sequences of T rows at positions firstPosition ..< firstPosition + T:
/// out = x + attention(LN(x)) Woᵀ, then out += ffn(LN(out)) W2ᵀ (overwritten; out may be x),
/// saving what backward needs in `a`. Training attends within each sequence's rows; decoding
/// (B 1) passes `cache`: the rows' keys and values are first written there at their positions,
/// then attention reads the cache's rows 0 ..< firstPosition + T. The one forward both use.
func blockForward(_ out: FloatPointer, _ x: ConstFloatPointer, _ a: BlockActivations, _ w: LayerViews, _ params: UnsafePointer<Float>,
                  config cfg: ModelConfig, batch: Int, T: Int, firstPosition: Int, cache: (keys: FloatPointer, values: FloatPointer)?,
                  ropeCos: ConstFloatPointer, ropeSin: ConstFloatPointer, scratch: AttentionScratch, products: ModelProducts) {
    precondition(cache == nil || batch == 1, "a key/value cache holds one sequence")
    let N = batch * T, C = cfg.dim, F = cfg.ffn, H = cfg.heads
    let p = { (view: TensorView) in params + view.offset }
    // h = LN(x); q, k, v = h Wq,k,vᵀ (the three matrices are adjacent: one [3C,C] product)
    layerNormForward(a.ln1, a.ln1Mean, a.ln1Rstd, x, p(w.attentionNormWeight), p(w.attentionNormBias), rows: N, C: C, eps: cfg.normEps)
    linearForward(a.qkv, a.ln1, p(w.wq), rows: N, inFeatures: C, outFeatures: 3 * C, using: products.linear)
    ropeForward(a.qkv, ropeCos, ropeSin, rows: N, T: T, C: C, heads: H, firstPosition: firstPosition)
    for b in 0..<batch {
        let q = a.qkv + b * T * 3 * C
        var keys = q + C, values = q + 2 * C, ldKV = 3 * C
        if let cache {
            for r in 0..<T {
                (cache.keys + (firstPosition + r) * C).update(from: q + r * 3 * C + C, count: C)
                (cache.values + (firstPosition + r) * C).update(from: q + r * 3 * C + 2 * C, count: C)
            }
            (keys, values, ldKV) = (cache.keys, cache.values, C)
        }
        attentionForward(a.attention + b * T * C, ldOut: C, a.logSumExp + b * H * T, q, ldQ: 3 * C, keys, values, ldKV: ldKV,
                         rows: T, firstPosition: firstPosition, heads: H, headDim: cfg.headDim, scratch: scratch,
                         using: products.attention, scores: products.scores)
    }
    // x = x + a Woᵀ
    a.residualMid.update(from: x, count: N * C)
    products.linear.product(false, true, m: N, n: C, k: C, alpha: 1, a.attention, lda: C, p(w.wo), ldb: C, beta: 1, a.residualMid, ldc: C)
    // h = LN(x); x = x + ffn(h) W2ᵀ
    layerNormForward(a.ln2, a.ln2Mean, a.ln2Rstd, a.residualMid, p(w.ffnNormWeight), p(w.ffnNormBias), rows: N, C: C, eps: cfg.normEps)
    linearForward(a.u1, a.ln2, p(w.w1), rows: N, inFeatures: C, outFeatures: F, using: products.linear)
    if let u3 = a.u3, let w3 = w.w3 {
        linearForward(u3, a.ln2, p(w3), rows: N, inFeatures: C, outFeatures: F, using: products.linear)
        swigluForward(a.gate, a.u1, u3, count: N * F)
    } else {
        geluForward(a.gate, a.u1, count: N * F)
    }
    out.update(from: a.residualMid, count: N * C)
    products.linear.product(false, true, m: N, n: C, k: F, alpha: 1, a.gate, lda: F, p(w.w2), ldb: F, beta: 1, out, ldc: C)
}

public final class Transformer {
    public let config: ModelConfig
    public let layout: ParameterLayout
    /// Sequences per forward pass (B) and positions per sequence (T).
    public let batch: Int, seqLen: Int
    public var rows: Int { batch * seqLen }
    /// Where the linear layers', attention's and the attention scores' matrix products run.
    public let products: MatrixProducts, attentionProducts: MatrixProducts, scoreProducts: MatrixProducts

    /// Inputs, filled by the caller: [B,T] each.
    public let tokens: UnsafeMutableBufferPointer<Int32>
    public let targets: UnsafeMutableBufferPointer<Int32>
    /// Outputs of `forward`: logits [B,T,V] and per-position losses [B,T].
    public let logits: UnsafeMutableBufferPointer<Float>
    public let losses: UnsafeMutableBufferPointer<Float>

    private let arena: UnsafeMutableBufferPointer<Float>
    private let ropeCos: UnsafeMutableBufferPointer<Float>, ropeSin: UnsafeMutableBufferPointer<Float>
    private let residuals: [FloatPointer]          // L+1 × [N,C]: input of block l; [L] feeds the final norm
    private let blocks: [BlockActivations]
    private let lnFinal: FloatPointer, lnFinalMean: FloatPointer, lnFinalRstd: FloatPointer
    private let dLogits: FloatPointer               // [N,V]
    private let dResidual: FloatPointer             // [N,C]
    private let dNormed: FloatPointer               // [N,C], gradient at a LayerNorm output
    private let dAttention: FloatPointer            // [N,C]
    private let dQKV: FloatPointer                  // [N,3C]
    private let dGate: FloatPointer, dU3: FloatPointer   // [N,F]; dGate is reused for dU1
    private let attentionScratch: AttentionScratch  // a few blocks: attention keeps no T×T tensor

    /// Called during `backward` with a flat offset each time the gradients from that offset to
    /// the end of the layout are final (after the head, after each block, after the embedding),
    /// so a caller can start reducing them while backward goes on. Must not allocate.
    public var gradientsFinal: ((Int) -> Void)?
    /// Called during `forward` before each part first reads parameters (the embedding, each
    /// block, the final norm, the output layer) with the offset below which that part reads,
    /// so a caller whose parameters are still arriving can wait for just those. Must not allocate.
    public var parametersNeeded: ((Int) -> Void)?
    /// A deliberate mistake in `backward`, for proving that the gradient check catches one.
    public var backwardFault: BackwardFault?
    /// A deliberate fault in attention's backward (for proving that `verify` catches it).
    public let attentionFault: AttentionFault?
    /// Bytes of activations (and their gradients) this model holds for its batch.
    public var activationBytes: Int { arena.count * MemoryLayout<Float>.stride }

    /// Floats of activations (and their gradients) a model of `batch` sequences of `seqLen`
    /// holds: what `init` allocates, and what memory plans count. Linear in T: nothing is T×T.
    public static func activationCount(config: ModelConfig, batch: Int, seqLen: Int) -> Int {
        let N = batch * seqLen, C = config.dim, F = config.ffn, V = config.vocab, L = config.layers
        return (L + 1) * N * C + L * BlockActivations.count(rows: N, config: config) + N * C + 2 * N + 2 * N * V + N
            + 3 * N * C + 3 * N * C + 2 * N * F + AttentionScratch.count(seqLen: seqLen)
    }

    public init(config: ModelConfig, batch: Int, seqLen: Int? = nil,
                products: ModelProducts = makeProducts(.fp32), attentionFault: AttentionFault? = nil) {
        let T = seqLen ?? config.seqLen
        precondition(batch > 0 && T > 0 && T <= config.seqLen)
        self.products = products.linear
        self.attentionProducts = products.attention
        self.scoreProducts = products.scores
        self.attentionFault = attentionFault
        self.config = config
        self.layout = ParameterLayout(config)
        self.batch = batch
        self.seqLen = T
        let N = batch * T, C = config.dim, F = config.ffn, V = config.vocab, L = config.layers
        let total = Self.activationCount(config: config, batch: batch, seqLen: T)
        arena = .allocate(capacity: total)
        arena.initialize(repeating: 0)
        var cursor = arena.baseAddress!
        func carve(_ count: Int) -> FloatPointer { defer { cursor += count }; return cursor }
        residuals = (0...L).map { _ in carve(N * C) }
        blocks = (0..<L).map { _ in BlockActivations(rows: N, config: config, carve: carve) }
        lnFinal = carve(N * C); lnFinalMean = carve(N); lnFinalRstd = carve(N)
        logits = UnsafeMutableBufferPointer(start: carve(N * V), count: N * V)
        dLogits = carve(N * V)
        losses = UnsafeMutableBufferPointer(start: carve(N), count: N)
        dResidual = carve(N * C); dNormed = carve(N * C); dAttention = carve(N * C)
        dQKV = carve(3 * N * C)
        dGate = carve(N * F); dU3 = carve(N * F)
        attentionScratch = AttentionScratch(seqLen: T, carve: carve)
        precondition(cursor == arena.baseAddress! + total)

        tokens = .allocate(capacity: N); tokens.initialize(repeating: 0)
        targets = .allocate(capacity: N); targets.initialize(repeating: 0)
        let tables = ropeTables(headDim: config.headDim, positions: config.seqLen, base: config.ropeBase)
        ropeCos = .allocate(capacity: tables.cos.count); _ = ropeCos.initialize(from: tables.cos)
        ropeSin = .allocate(capacity: tables.sin.count); _ = ropeSin.initialize(from: tables.sin)
    }

    deinit {
        arena.deallocate(); tokens.deallocate(); targets.deallocate()
        ropeCos.deallocate(); ropeSin.deallocate()
    }

    /// Runs the model on `tokens`, writing `logits` and `losses`. With `gradScale` set, also
    /// prepares the loss gradient for `backward` as gradScale·∂(Σ losses)/∂logits
    /// (gradScale = 1/(tokens averaged over) gives the gradient of the mean loss).
    public func forward(_ params: UnsafePointer<Float>, gradScale: Float? = nil) {
        let cfg = config, N = rows, C = cfg.dim, V = cfg.vocab, T = seqLen
        let p = { (view: TensorView) in params + view.offset }
        parametersNeeded?(layout.embedding.range.upperBound)
        embeddingForward(residuals[0], tokens.baseAddress!, p(layout.embedding), rows: N, C: C)
        for (l, a) in blocks.enumerated() {
            parametersNeeded?(l + 1 < cfg.layers ? layout.layers[l + 1].attentionNormWeight.offset : layout.normWeight.offset)
            blockForward(residuals[l + 1], residuals[l], a, layout.layers[l], params, config: cfg, batch: batch, T: T, firstPosition: 0,
                         cache: nil, ropeCos: ropeCos.baseAddress!, ropeSin: ropeSin.baseAddress!, scratch: attentionScratch,
                         products: (products, attentionProducts, scoreProducts))
        }
        parametersNeeded?(layout.output.offset)
        layerNormForward(lnFinal, lnFinalMean, lnFinalRstd, residuals[cfg.layers], p(layout.normWeight), p(layout.normBias), rows: N, C: C, eps: cfg.normEps)
        parametersNeeded?(layout.count)
        linearForward(logits.baseAddress!, lnFinal, p(layout.output), rows: N, inFeatures: C, outFeatures: V, using: products)
        crossEntropyForward(losses.baseAddress!, gradScale == nil ? nil : dLogits, logits.baseAddress!, targets.baseAddress!,
                            rows: N, V: V, gradScale: gradScale ?? 0)
    }

    /// Back-propagates the loss gradient prepared by the last `forward(_:gradScale:)`,
    /// ACCUMULATING (+=) into `grads` (same layout as params), or overwriting them when
    /// `accumulate` is false (which saves zeroing the buffer first).
    public func backward(_ params: UnsafePointer<Float>, _ grads: UnsafeMutablePointer<Float>, accumulate: Bool = true) {
        let cfg = config, N = rows, C = cfg.dim, F = cfg.ffn, V = cfg.vocab, H = cfg.heads, T = seqLen
        let p = { (view: TensorView) in params + view.offset }
        let g = { (view: TensorView) in grads + view.offset }
        let dx = dResidual
        if !accumulate {
            // Matrix gradients are written by their products (beta 0); the rest are sums over rows.
            for t in layout.tensors where !t.isMatrix || t.offset == layout.embedding.offset {
                (grads + t.offset).update(repeating: 0, count: t.count)
            }
        }
        let once = accumulate   // accumulateWeight for the matrix products
        // logits = LN(x) Woutᵀ
        linearBackward(dNormed, g(layout.output), dLogits, lnFinal, p(layout.output), rows: N, inFeatures: C, outFeatures: V,
                       accumulateWeight: once, using: products)
        dx.update(repeating: 0, count: N * C)
        layerNormBackward(dx, g(layout.normWeight), g(layout.normBias), dNormed, residuals[cfg.layers], p(layout.normWeight),
                          lnFinalMean, lnFinalRstd, rows: N, C: C, fault: backwardFault)
        gradientsFinal?(layout.normWeight.offset)
        for (l, a) in blocks.enumerated().reversed() {
            let w = layout.layers[l]
            // x = x + ffn(h) W2ᵀ
            linearBackward(dGate, g(w.w2), dx, a.gate, p(w.w2), rows: N, inFeatures: F, outFeatures: C, accumulateWeight: once, using: products)
            if let u3 = a.u3, let w3 = w.w3 {
                swigluBackward(dGate, dU3, dGate, a.u1, u3, count: N * F)   // dGate now holds dU1
                linearBackward(dNormed, g(w.w1), dGate, a.ln2, p(w.w1), rows: N, inFeatures: C, outFeatures: F, accumulateWeight: once, using: products)
                linearBackward(dNormed, g(w3), dU3, a.ln2, p(w3), rows: N, inFeatures: C, outFeatures: F, accumulateInput: true,
                               accumulateWeight: once, using: products)
            } else {
                geluBackward(dGate, dGate, a.u1, count: N * F)
                linearBackward(dNormed, g(w.w1), dGate, a.ln2, p(w.w1), rows: N, inFeatures: C, outFeatures: F, accumulateWeight: once, using: products)
            }
            // h = LN(x) before the FFN: the residual gradient gains the norm's input gradient
            layerNormBackward(dx, g(w.ffnNormWeight), g(w.ffnNormBias), dNormed, a.residualMid, p(w.ffnNormWeight),
                              a.ln2Mean, a.ln2Rstd, rows: N, C: C, fault: backwardFault)
            // x = x + a Woᵀ
            linearBackward(dAttention, g(w.wo), dx, a.attention, p(w.wo), rows: N, inFeatures: C, outFeatures: C, accumulateWeight: once, using: products)
            for b in 0..<batch {
                let q = a.qkv + b * T * 3 * C, dq = dQKV + b * T * 3 * C
                attentionBackward(dq, dq + C, dq + 2 * C, dAttention + b * T * C, q, q + C, q + 2 * C, ldQKV: 3 * C,
                                  a.attention + b * T * C, ldOut: C, a.logSumExp + b * H * T, rows: T, heads: H, headDim: cfg.headDim,
                                  scratch: attentionScratch, fault: attentionFault ?? backwardFault?.attentionFault, using: attentionProducts, scores: scoreProducts)
            }
            ropeBackward(dQKV, ropeCos.baseAddress!, ropeSin.baseAddress!, rows: N, T: T, C: C, heads: H)
            // q, k, v = h Wq,k,vᵀ; h = LN(x)
            linearBackward(dNormed, g(w.wq), dQKV, a.ln1, p(w.wq), rows: N, inFeatures: C, outFeatures: 3 * C, accumulateWeight: once, using: products)
            layerNormBackward(dx, g(w.attentionNormWeight), g(w.attentionNormBias), dNormed, residuals[l], p(w.attentionNormWeight),
                              a.ln1Mean, a.ln1Rstd, rows: N, C: C, fault: backwardFault)
            gradientsFinal?(w.attentionNormWeight.offset)
        }
        embeddingBackward(g(layout.embedding), dx, tokens.baseAddress!, rows: N, C: C)
        gradientsFinal?(0)
    }

    /// Sum of the token losses of sequence `b` from the last forward, in double.
    public func lossSum(sequence b: Int) -> Double {
        var total = 0.0
        for i in (b * seqLen)..<((b + 1) * seqLen) { total += Double(losses[i]) }
        return total
    }

    /// Mean token loss of the last forward: sequences summed in order, then divided.
    public var meanLoss: Double {
        var total = 0.0
        for b in 0..<batch { total += lossSum(sequence: b) }
        return total / Double(rows)
    }
}
