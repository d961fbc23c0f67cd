// Vector: SIMD helpers for the elementwise kernels (loads, stores, exp, sums).
// Kernels run over raw pointers; these keep the hot loops vectorised and exp fast.

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

public typealias Vec = SIMD8<Float>

@inline(__always) func load(_ p: UnsafePointer<Float>) -> Vec {
    UnsafeRawPointer(p).loadUnaligned(as: Vec.self)
}

@inline(__always) func store(_ v: Vec, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: Vec.self)
}

/// e^x to about 1 ulp (Cephes' expf polynomial); large negative inputs give ~1e-38, not 0.
@inline(__always) func exp(_ v: Vec) -> Vec {
    let low = Vec(repeating: -87.33654), high = Vec(repeating: 88.0)
    var x = v.replacing(with: low, where: v .< low).replacing(with: high, where: v .> high)
    // Adding 1.5·2²³ rounds to an integer n held in the low mantissa bits (no generic
    // float→int conversion, which Swift's SIMD types do element by element).
    let magic = Vec(repeating: 0x1.8p23)
    let shifted = x * 1.442_695_04 + magic
    let fx = shifted - magic
    // ln 2 split in two so that x - n·ln2 stays exact.
    x = x - fx * 0.693_359_375
    x = x + fx * 2.121_944_4e-4
    var y = Vec(repeating: 1.987_569_15e-4)
    y = y * x + 1.398_199_950_7e-3
    y = y * x + 8.333_451_907_3e-3
    y = y * x + 4.166_579_589_4e-2
    y = y * x + 1.666_666_545_9e-1
    y = y * x + 5.000_000_120_1e-1
    y = y * (x * x) + x + 1
    let biased = unsafeBitCast(shifted, to: SIMD8<Int32>.self) &- (0x4B40_0000 - 127)
    return y * unsafeBitCast(biased &<< 23, to: Vec.self)
}

/// The scalar exp used where a vector does not fit, with the vector's rounding.
@inline(__always) func exp1(_ x: Float) -> Float { exp(Vec(repeating: x))[0] }

@inline(__always) func sigmoid(_ v: Vec) -> Vec { 1 / (1 + exp(-v)) }

@inline(__always) func tanhVec(_ v: Vec) -> Vec {
    // tanh z = 1 - 2/(e^{2z} + 1), exact enough and saturating correctly at ±1.
    1 - 2 / (exp(2 * v) + 1)
}

/// Applies `body` to every 8-wide chunk of `count` elements; the tail is padded with zeros
/// (inputs) and only `count` outputs are written, so every element uses the same arithmetic.
@inline(__always) func forEachChunk(_ count: Int, _ body: (Int, Int) -> Void) {
    var i = 0
    while i + 8 <= count { body(i, 8); i += 8 }
    if i < count { body(i, count - i) }
}

@inline(__always) func load(_ p: UnsafePointer<Float>, _ n: Int) -> Vec {
    if n == 8 { return load(p) }
    var v = Vec()
    for j in 0..<n { v[j] = p[j] }
    return v
}

@inline(__always) func store(_ v: Vec, _ p: UnsafeMutablePointer<Float>, _ n: Int) {
    if n == 8 { store(v, p); return }
    for j in 0..<n { p[j] = v[j] }
}

/// Sum of n floats with eight parallel accumulators.
@inline(__always) func sum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = Vec()
    forEachChunk(n) { i, w in acc += load(p + i, w) }
    return acc.sum()
}

/// Dot product of two n-float vectors.
@inline(__always) func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = Vec()
    forEachChunk(n) { i, w in acc += load(a + i, w) * load(b + i, w) }
    return acc.sum()
}

/// Largest of n floats.
@inline(__always) func maximum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = Vec(repeating: -.infinity)
    forEachChunk(n) { i, w in
        var v = load(p + i, w)
        if w < 8 { for j in w..<8 { v[j] = -.infinity } }
        acc = acc.replacing(with: v, where: v .> acc)
    }
    return acc.max()
}

/// The bfloat16 nearest to each value (ties to even), as a float32: goml_bfloat16.h's rule
/// (goml_bf16_from_float, which the bf16 products apply when they pack an operand), eight at a
/// time. A NaN stays a NaN: truncated, its quiet bit set.
@inline(__always) func roundedToBFloat16(_ v: Vec) -> Vec {
    let bits = unsafeBitCast(v, to: SIMD8<UInt32>.self)
    let rounded = (bits &+ 0x7FFF &+ ((bits &>> 16) & 1)).replacing(with: bits | 0x0040_0000, where: v .!= v)
    return unsafeBitCast(rounded & 0xFFFF_0000, to: Vec.self)
}

/// Rounds `values` in place to the nearest bfloat16 (see roundedToBFloat16(_:)).
public func roundToBFloat16(_ values: UnsafeMutableBufferPointer<Float>) {
    guard let base = values.baseAddress else { return }
    forEachChunk(values.count) { i, w in store(roundedToBFloat16(load(base + i, w)), base + i, w) }
}
