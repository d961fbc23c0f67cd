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

// MARK: - Causal self-attention

/// out[B,T,C] = concat over heads of softmax(q kᵀ/√D + causal mask) v (overwritten);
/// saves the probabilities probs[B,H,T,T] (zero above the diagonal). qkv is [B,T,3C] after RoPE.
/// The scores q·kᵀ use `scores`, the rest `mm`.
func attentionForward(_ out: FloatPointer, _ probs: FloatPointer, _ qkv: ConstFloatPointer, B: Int, T: Int, C: Int, heads: Int,
                      using mm: MatrixProducts, scores: MatrixProducts) {
    let D = C / heads, scale = 1 / Float(D).squareRoot()
    for b in 0..<B {
        for h in 0..<heads {
            let q = qkv + b * T * 3 * C + h * D, k = q + C, v = q + 2 * C
            let p = probs + (b * heads + h) * T * T
            scores.product(false, true, m: T, n: T, k: D, alpha: scale, q, lda: 3 * C, k, ldb: 3 * C, beta: 0, p, ldc: T)
            for i in 0..<T { softmaxRowCausal(p + i * T, valid: i + 1, width: T) }
            mm.product(false, false, m: T, n: D, k: T, alpha: 1, p, lda: T, v, ldb: 3 * C, beta: 0, out + b * T * C + h * D, ldc: C)
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

/// Softmax of the first `valid` entries in place; entries valid..<width become 0 (the mask).
@inline(__always) func softmaxRowCausal(_ row: FloatPointer, valid: Int, width: Int) {
    let inv = 1 / sumOfShiftedExp(row, valid, shift: maximum(row, valid), out: row)
    forEachChunk(valid) { i, w in store(load(row + i, w) * inv, row + i, w) }
    if valid < width { (row + valid).update(repeating: 0, count: width - valid) }
}

/// dqkv[B,T,3C] = ∂loss/∂(q,k,v after RoPE) (overwritten). `scratch` holds T×T floats.
func attentionBackward(_ dqkv: FloatPointer, _ scratch: FloatPointer, _ dOut: ConstFloatPointer,
                       _ qkv: ConstFloatPointer, _ probs: ConstFloatPointer, B: Int, T: Int, C: Int, heads: Int,
                       using mm: MatrixProducts, fault: BackwardFault? = nil) {
    let D = C / heads, scale = 1 / Float(D).squareRoot()
    let maskedDiagonal = fault == .attentionDiagonal ? 1 : 0
    for b in 0..<B {
        for h in 0..<heads {
            let q = qkv + b * T * 3 * C + h * D, k = q + C, v = q + 2 * C
            let dq = dqkv + b * T * 3 * C + h * D, dk = dq + C, dv = dq + 2 * C
            let dA = dOut + b * T * C + h * D
            let p = probs + (b * heads + h) * T * T
            // a = P v  →  dv = Pᵀ dA, dP = dA vᵀ
            mm.product(true, false, m: T, n: D, k: T, alpha: 1, p, lda: T, dA, ldb: C, beta: 0, dv, ldc: 3 * C)
            mm.product(false, true, m: T, n: T, k: D, alpha: 1, dA, lda: C, v, ldb: 3 * C, beta: 0, scratch, ldc: T)
            // P = softmax(S)  →  dS = P ⊙ (dP − rowsum(P ⊙ dP)); masked entries have P = 0.
            for i in 0..<T {
                let pr = p + i * T, ds = scratch + i * T, valid = i + 1 - maskedDiagonal
                let s = dot(pr, ds, valid)
                forEachChunk(valid) { j, w in store(load(pr + j, w) * (load(ds + j, w) - s), ds + j, w) }
                if valid < T { (ds + valid).update(repeating: 0, count: T - valid) }
            }
            // S = scale·q kᵀ  →  dq = scale·dS k, dk = scale·dSᵀ q
            mm.product(false, false, m: T, n: D, k: T, alpha: scale, scratch, lda: T, k, ldb: 3 * C, beta: 0, dq, ldc: 3 * C)
            mm.product(true, false, m: T, n: D, k: T, alpha: scale, scratch, lda: T, q, ldb: 3 * C, beta: 0, dk, ldc: 3 * C)
        }
    }
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
