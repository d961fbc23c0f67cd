// Kernels: the model's building blocks as forward/backward pairs, side by side.
// Convention (llm.c's): outputs first, then inputs, then sizes. Forward saves what backward
// needs; backward ACCUMULATES (+=) into parameter gradients and says what it does to
// activation gradients. Matrix products go through the MatrixProducts seam (`using`) with
// transpose flags.
// No allocation, no I/O, no MPI.

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

public typealias FloatPointer = UnsafeMutablePointer<Float>
public typealias ConstFloatPointer = UnsafePointer<Float>

// MARK: - Embedding

/// out[N,C] = table[tokens[n]] (overwritten).
func embeddingForward(_ out: FloatPointer, _ tokens: UnsafePointer<Int32>, _ table: ConstFloatPointer, rows: Int, C: Int) {
    for n in 0..<rows {
        (out + n * C).update(from: table + Int(tokens[n]) * C, count: C)
    }
}

/// dTable[tokens[n]] += dOut[n] (accumulated).
func embeddingBackward(_ dTable: FloatPointer, _ dOut: ConstFloatPointer, _ tokens: UnsafePointer<Int32>, rows: Int, C: Int) {
    for n in 0..<rows {
        let d = dTable + Int(tokens[n]) * C, g = dOut + n * C
        forEachChunk(C) { i, w in store(load(d + i, w) + load(g + i, w), d + i, w) }
    }
}

// MARK: - Linear (y = x Wᵀ, as torch.nn.Linear without bias)

/// out[N,O] = inp[N,I] · W[O,I]ᵀ (overwritten).
func linearForward(_ out: FloatPointer, _ inp: ConstFloatPointer, _ weight: ConstFloatPointer, rows: Int, inFeatures: Int, outFeatures: Int,
                   using mm: MatrixProducts) {
    mm.product(false, true, m: rows, n: outFeatures, k: inFeatures, alpha: 1, inp, lda: inFeatures, weight, ldb: inFeatures,
         beta: 0, out, ldc: outFeatures)
}

/// dInp[N,I] = dOut · W (overwritten, or accumulated when `accumulateInput`);
/// dWeight += dOutᵀ · inp (or overwritten when `accumulateWeight` is false).
func linearBackward(_ dInp: FloatPointer, _ dWeight: FloatPointer, _ dOut: ConstFloatPointer, _ inp: ConstFloatPointer,
                    _ weight: ConstFloatPointer, rows: Int, inFeatures: Int, outFeatures: Int, accumulateInput: Bool = false,
                    accumulateWeight: Bool = true, using mm: MatrixProducts) {
    mm.product(false, false, m: rows, n: inFeatures, k: outFeatures, alpha: 1, dOut, lda: outFeatures, weight, ldb: inFeatures,
         beta: accumulateInput ? 1 : 0, dInp, ldc: inFeatures)
    mm.product(true, false, m: outFeatures, n: inFeatures, k: rows, alpha: 1, dOut, lda: outFeatures, inp, ldb: inFeatures,
         beta: accumulateWeight ? 1 : 0, dWeight, ldc: inFeatures)
}

// MARK: - LayerNorm

/// out[N,C] = (x − mean)·rstd·weight + bias (overwritten); saves mean[N] and rstd[N].
func layerNormForward(_ out: FloatPointer, _ mean: FloatPointer, _ rstd: FloatPointer, _ x: ConstFloatPointer,
                      _ weight: ConstFloatPointer, _ bias: ConstFloatPointer, rows: Int, C: Int, eps: Float) {
    let invC = 1 / Float(C)
    for n in 0..<rows {
        let xr = x + n * C, o = out + n * C
        let mu = sum(xr, C) * invC
        // Two passes (mean, then centred squares): the variance stays accurate when |mean| ≫ std.
        var acc = Vec()
        forEachChunk(C) { i, w in
            var d = load(xr + i, w) - mu
            if w < 8 { for j in w..<8 { d[j] = 0 } }
            acc += d * d
        }
        let r = 1 / (acc.sum() * invC + eps).squareRoot()
        forEachChunk(C) { i, w in
            store((load(xr + i, w) - mu) * r * load(weight + i, w) + load(bias + i, w), o + i, w)
        }
        mean[n] = mu
        rstd[n] = r
    }
}

/// dx += ∂loss/∂x; dWeight += Σ dOut·x̂; dBias += Σ dOut (all accumulated).
func layerNormBackward(_ dx: FloatPointer, _ dWeight: FloatPointer, _ dBias: FloatPointer, _ dOut: ConstFloatPointer,
                       _ x: ConstFloatPointer, _ weight: ConstFloatPointer, _ mean: ConstFloatPointer, _ rstd: ConstFloatPointer,
                       rows: Int, C: Int, fault: BackwardFault? = nil) {
    let invC = 1 / Float(C), weightFactorDropped = fault == .layerNormWeight
    for n in 0..<rows {
        let xr = x + n * C, g = dOut + n * C, d = dx + n * C
        let mu = mean[n], r = rstd[n]
        var sumDNorm = Vec(), sumDNormXHat = Vec()
        forEachChunk(C) { i, w in
            let xHat = (load(xr + i, w) - mu) * r
            let dNorm = load(g + i, w) * load(weight + i, w)
            sumDNorm += dNorm
            sumDNormXHat += dNorm * xHat
            store(load(dWeight + i, w) + load(g + i, w) * (weightFactorDropped ? Vec(repeating: 1) : xHat), dWeight + i, w)
            store(load(dBias + i, w) + load(g + i, w), dBias + i, w)
        }
        let meanDNorm = sumDNorm.sum() * invC, meanDNormXHat = sumDNormXHat.sum() * invC
        forEachChunk(C) { i, w in
            let xHat = (load(xr + i, w) - mu) * r
            let dNorm = load(g + i, w) * load(weight + i, w)
            store(load(d + i, w) + (dNorm - meanDNorm - xHat * meanDNormXHat) * r, d + i, w)
        }
    }
}

// MARK: - RoPE (half-split pairs (x[i], x[i+D/2]) of each head of q and k)

/// Rotation tables cos/sin [T, D/2]: θ = p·base^(−2i/D), computed in double, rounded once.
public func ropeTables(headDim D: Int, positions T: Int, base: Double) -> (cos: [Float], sin: [Float]) {
    var c = [Float](repeating: 0, count: T * D / 2), s = c
    for p in 0..<T {
        for i in 0..<(D / 2) {
            let theta = Double(p) * pow(base, -2.0 * Double(i) / Double(D))
            c[p * D / 2 + i] = Float(cos(theta))
            s[p * D / 2 + i] = Float(sin(theta))
        }
    }
    return (c, s)
}

/// Rotates q and k of every head in place in qkv[N, 3C] (q at column 0, k at column C);
/// row n is position `firstPosition + n % T`.
func ropeForward(_ qkv: FloatPointer, _ cosTable: ConstFloatPointer, _ sinTable: ConstFloatPointer,
                 rows: Int, T: Int, C: Int, heads: Int, firstPosition: Int = 0) {
    ropeRotate(qkv, cosTable, sinTable, rows: rows, T: T, C: C, heads: heads, firstPosition: firstPosition, sign: 1)
}

/// dqkv's q and k parts (overwritten in place) go back through the rotation: rotating by −θ inverts it.
func ropeBackward(_ dqkv: FloatPointer, _ cosTable: ConstFloatPointer, _ sinTable: ConstFloatPointer,
                  rows: Int, T: Int, C: Int, heads: Int) {
    ropeRotate(dqkv, cosTable, sinTable, rows: rows, T: T, C: C, heads: heads, firstPosition: 0, sign: -1)
}

@inline(__always)
private func ropeRotate(_ qkv: FloatPointer, _ cosTable: ConstFloatPointer, _ sinTable: ConstFloatPointer,
                        rows: Int, T: Int, C: Int, heads: Int, firstPosition: Int, sign: Float) {
    let D = C / heads, half = D / 2
    for n in 0..<rows {
        let p = firstPosition + n % T
        let c = cosTable + p * half, s = sinTable + p * half
        for part in 0..<2 {
            for h in 0..<heads {
                let x = qkv + n * 3 * C + part * C + h * D
                forEachChunk(half) { i, w in
                    let x1 = load(x + i, w), x2 = load(x + half + i, w)
                    let cv = load(c + i, w), sv = load(s + i, w) * sign
                    store(x1 * cv - x2 * sv, x + i, w)
                    store(x1 * sv + x2 * cv, x + half + i, w)
                }
            }
        }
    }
}

// MARK: - Causal self-attention (blocked, in the style of FlashAttention-2)

/// Query rows and keys per attention block. Larger blocks make each block product more
/// efficient but waste more masked work on the diagonal; at 128 a block of scores is 64 KB, so
/// S, P and dS stay in L2 beside their q, k and v rows (BENCHMARKS.md compares 64, 128, 256).
/// The block products go through the MatrixProducts seam (sgemm with transpose flags, or
/// bf16), which lets bf16 serve attention unchanged.
let attentionBlock = 128

/// Deliberate faults that `verify` must catch (hidden test flag).
public enum AttentionFault: String, Sendable, CaseIterable {
    /// The backward pass skips the diagonal key block of every query block.
    case skipDiagonalBlock = "skip-diagonal-block"
    /// The backward pass masks the diagonal as well as the future in dS (an off-by-one causal
    /// mask): no gradient flows through a position's score with itself.
    case maskedDiagonal = "masked-diagonal"
}

/// Working space of the attention kernels, carved once per model (one per worker thread):
/// two blocks of scores and per-row numbers. Only `rowDelta` grows with T, linearly.
struct AttentionScratch {
    let scores: FloatPointer      // [block, block]: S, then P
    let dScores: FloatPointer     // [block, block]: dP, then dS
    let rowMax: FloatPointer      // [block]: the online softmax's running maximum m
    let rowSum: FloatPointer      // [block]: its running sum l of exp(s − m)
    let rowDelta: FloatPointer    // [T]: D = rowsum(dOut ∘ out) of one head

    static func count(seqLen T: Int) -> Int { 2 * attentionBlock * attentionBlock + 2 * attentionBlock + T }

    init(seqLen T: Int, carve: (Int) -> FloatPointer) {
        scores = carve(attentionBlock * attentionBlock); dScores = carve(attentionBlock * attentionBlock)
        rowMax = carve(attentionBlock); rowSum = carve(attentionBlock); rowDelta = carve(T)
    }
}

/// out = concat over heads of softmax(q kᵀ/√D + causal mask) v (overwritten) for `rows` queries
/// at positions firstPosition ..< firstPosition + rows, against keys 0 ..< firstPosition + rows;
/// saves one log-sum-exp per head and row, lse[H, rows]. An online softmax over key blocks: no
/// rows × keys tensor exists, and key blocks above the diagonal are never computed. Head h sits
/// at column h·D of q, k, v and out, whose rows are ldQ, ldKV, ldKV and ldOut apart (training
/// reads q, k, v from qkv [T,3C]; decoding reads k and v from the [T,C] cache).
/// The scores q·kᵀ use `scores`, P·v uses `mm`; the softmax is float32.
func attentionForward(_ out: FloatPointer, ldOut: Int, _ lse: FloatPointer, _ q: ConstFloatPointer, ldQ: Int,
                      _ k: ConstFloatPointer, _ v: ConstFloatPointer, ldKV: Int, rows: Int, firstPosition: Int,
                      heads: Int, headDim D: Int, scratch: AttentionScratch, using mm: MatrixProducts, scores: MatrixProducts) {
    let scale = 1 / Float(D).squareRoot(), block = attentionBlock
    let s = scratch.scores, m = scratch.rowMax, l = scratch.rowSum
    for h in 0..<heads {
        for r0 in stride(from: 0, to: rows, by: block) {
            let bq = min(block, rows - r0)
            let qBlock = q + r0 * ldQ + h * D, outBlock = out + r0 * ldOut + h * D
            let keys = firstPosition + r0 + bq   // the block's last query sees keys 0 ..< keys
            for c0 in stride(from: 0, to: keys, by: block) {
                let bk = min(block, keys - c0), first = c0 == 0
                scores.product(false, true, m: bq, n: bk, k: D, alpha: scale, qBlock, lda: ldQ, k + c0 * ldKV + h * D, ldb: ldKV,
                               beta: 0, s, ldc: block)
                for r in 0..<bq {
                    let row = s + r * block, visible = min(bk, max(0, firstPosition + r0 + r + 1 - c0))
                    if visible == 0 { row.update(repeating: 0, count: bk); continue }   // every key of this block is after row r
                    let newMax = first ? maximum(row, visible) : max(m[r], maximum(row, visible))
                    let blockSum = sumOfShiftedExp(row, visible, shift: newMax, out: row)
                    if visible < bk { (row + visible).update(repeating: 0, count: bk - visible) }
                    if first {
                        l[r] = blockSum
                    } else {
                        // Rescale what earlier blocks summed to the new maximum.
                        let correction = exp1(m[r] - newMax)
                        l[r] = l[r] * correction + blockSum
                        let o = outBlock + r * ldOut
                        if correction != 1 { forEachChunk(D) { i, w in store(load(o + i, w) * correction, o + i, w) } }
                    }
                    m[r] = newMax
                }
                mm.product(false, false, m: bq, n: D, k: bk, alpha: 1, s, lda: block, v + c0 * ldKV + h * D, ldb: ldKV,
                           beta: first ? 0 : 1, outBlock, ldc: ldOut)
            }
            for r in 0..<bq {
                let o = outBlock + r * ldOut, inverse = 1 / l[r]
                forEachChunk(D) { i, w in store(load(o + i, w) * inverse, o + i, w) }
                lse[h * rows + r0 + r] = m[r] + log(l[r])
            }
        }
    }
}

/// dq, dk, dv = ∂loss/∂(q, k, v) (overwritten) of attentionForward over T rows from position 0,
/// given dOut and the forward's out and lse. Each block's probabilities are recomputed as
/// P = exp(S − lse); with D = rowsum(dOut ∘ out), dS = P ∘ (dP − D). Key blocks above the
/// diagonal are skipped, as in the forward. q, k, v, dq, dk, dv have rows ldQKV apart; out and
/// dOut ldOut. S uses `scores`, the other products `mm`. `fault` breaks it on purpose.
func attentionBackward(_ dq: FloatPointer, _ dk: FloatPointer, _ dv: FloatPointer, _ dOut: ConstFloatPointer,
                       _ q: ConstFloatPointer, _ k: ConstFloatPointer, _ v: ConstFloatPointer, ldQKV ld: Int,
                       _ out: ConstFloatPointer, ldOut: Int, _ lse: ConstFloatPointer, rows T: Int, heads: Int, headDim D: Int,
                       scratch: AttentionScratch, fault: AttentionFault? = nil, using mm: MatrixProducts, scores: MatrixProducts) {
    let scale = 1 / Float(D).squareRoot(), block = attentionBlock
    let p = scratch.scores, ds = scratch.dScores, delta = scratch.rowDelta
    for h in 0..<heads {
        let column = h * D, lseHead = lse + h * T
        for r in 0..<T {
            delta[r] = dot(dOut + r * ldOut + column, out + r * ldOut + column, D)
            (dq + r * ld + column).update(repeating: 0, count: D)
            (dk + r * ld + column).update(repeating: 0, count: D)
            (dv + r * ld + column).update(repeating: 0, count: D)
        }
        // Key blocks outer (FlashAttention-2's order): dk and dv of a block gather from every
        // query block at or below the diagonal.
        for c0 in stride(from: 0, to: T, by: block) {
            let bk = min(block, T - c0)
            let kBlock = k + c0 * ld + column, vBlock = v + c0 * ld + column
            for r0 in stride(from: c0, to: T, by: block) {
                if fault == .skipDiagonalBlock && r0 == c0 { continue }
                let bq = min(block, T - r0)
                let qBlock = q + r0 * ld + column, dOutBlock = dOut + r0 * ldOut + column
                // P = exp(scale·q kᵀ − lse), zero above the diagonal
                scores.product(false, true, m: bq, n: bk, k: D, alpha: scale, qBlock, lda: ld, kBlock, ldb: ld, beta: 0, p, ldc: block)
                for r in 0..<bq {
                    let row = p + r * block, visible = min(bk, r0 + r + 1 - c0), rowLSE = lseHead[r0 + r]
                    forEachChunk(visible) { j, w in store(exp(load(row + j, w) - rowLSE), row + j, w) }
                    if visible < bk { (row + visible).update(repeating: 0, count: bk - visible) }
                }
                // out = P v  →  dv += Pᵀ dOut, dP = dOut vᵀ
                mm.product(true, false, m: bk, n: D, k: bq, alpha: 1, p, lda: block, dOutBlock, ldb: ldOut, beta: 1,
                           dv + c0 * ld + column, ldc: ld)
                mm.product(false, true, m: bq, n: bk, k: D, alpha: 1, dOutBlock, lda: ldOut, vBlock, ldb: ld, beta: 0, ds, ldc: block)
                // P = softmax(S)  →  dS = P ∘ (dP − D); masked entries have P = 0.
                for r in 0..<bq {
                    let pr = p + r * block, dsr = ds + r * block, rowDelta = delta[r0 + r]
                    forEachChunk(bk) { j, w in store(load(pr + j, w) * (load(dsr + j, w) - rowDelta), dsr + j, w) }
                    if fault == .maskedDiagonal, r0 + r >= c0, r0 + r < c0 + bk { dsr[r0 + r - c0] = 0 }
                }
                // S = scale·q kᵀ  →  dq += scale·dS k, dk += scale·dSᵀ q
                mm.product(false, false, m: bq, n: D, k: bk, alpha: scale, ds, lda: block, kBlock, ldb: ld, beta: 1,
                           dq + r0 * ld + column, ldc: ld)
                mm.product(true, false, m: bk, n: D, k: bq, alpha: scale, ds, lda: block, qBlock, ldb: ld, beta: 1,
                           dk + c0 * ld + column, ldc: ld)
            }
        }
    }
}

/// Σ exp(row[i] − shift) over n entries; with `out`, also writes each exp(row[i] − shift) there.
@inline(__always) func sumOfShiftedExp(_ row: ConstFloatPointer, _ n: Int, shift: Float, out: FloatPointer? = nil) -> Float {
    var total = Vec()
    forEachChunk(n) { i, w in
        var e = exp(load(row + i, w) - shift)
        if w < 8 { for j in w..<8 { e[j] = 0 } }
        total += e
        if let out { store(e, out + i, w) }
    }
    return total.sum()
}

// MARK: - Feed-forward activations

/// gate[n] = silu(u1[n])·u3[n] (overwritten).
func swigluForward(_ gate: FloatPointer, _ u1: ConstFloatPointer, _ u3: ConstFloatPointer, count: Int) {
    forEachChunk(count) { i, w in
        let a = load(u1 + i, w)
        store(a * sigmoid(a) * load(u3 + i, w), gate + i, w)
    }
}

/// dU1 = dGate·u3·silu′(u1), dU3 = dGate·silu(u1) (overwritten).
func swigluBackward(_ dU1: FloatPointer, _ dU3: FloatPointer, _ dGate: ConstFloatPointer,
                    _ u1: ConstFloatPointer, _ u3: ConstFloatPointer, count: Int) {
    forEachChunk(count) { i, w in
        let a = load(u1 + i, w), g = load(dGate + i, w), sig = sigmoid(a)
        store(g * load(u3 + i, w) * sig * (1 + a * (1 - sig)), dU1 + i, w)
        store(g * a * sig, dU3 + i, w)
    }
}

private let geluScale: Float = 0.797_884_560_8   // √(2/π)

/// out[n] = GELU_tanh(x[n]) = ½x(1 + tanh(√(2/π)(x + 0.044715x³))) (overwritten).
func geluForward(_ out: FloatPointer, _ x: ConstFloatPointer, count: Int) {
    forEachChunk(count) { i, w in
        let a = load(x + i, w)
        let t = tanhVec(geluScale * (a + 0.044715 * a * a * a))
        store(0.5 * a * (1 + t), out + i, w)
    }
}

/// dX = dOut·GELU′(x) (overwritten).
func geluBackward(_ dX: FloatPointer, _ dOut: ConstFloatPointer, _ x: ConstFloatPointer, count: Int) {
    forEachChunk(count) { i, w in
        let a = load(x + i, w)
        let t = tanhVec(geluScale * (a + 0.044715 * a * a * a))
        let dInner = geluScale * (1 + 3 * 0.044715 * a * a)
        store(load(dOut + i, w) * (0.5 * (1 + t) + 0.5 * a * (1 - t * t) * dInner), dX + i, w)
    }
}

// MARK: - Cross-entropy

/// losses[n] = −log softmax(logits[n])[target[n]] (overwritten); when dLogits is given,
/// dLogits[n] = (softmax(logits[n]) − onehot(target))·gradScale (overwritten).
func crossEntropyForward(_ losses: FloatPointer, _ dLogits: FloatPointer?, _ logits: ConstFloatPointer,
                         _ targets: UnsafePointer<Int32>, rows: Int, V: Int, gradScale: Float) {
    for n in 0..<rows {
        let row = logits + n * V
        let m = maximum(row, V)
        let sumExp = sumOfShiftedExp(row, V, shift: m)
        let target = Int(targets[n])
        losses[n] = (m + log(sumExp)) - row[target]
        if let dLogits {
            let d = dLogits + n * V, scale = gradScale / sumExp
            forEachChunk(V) { i, w in store(exp(load(row + i, w) - m) * scale, d + i, w) }
            d[target] -= gradScale
        }
    }
}
