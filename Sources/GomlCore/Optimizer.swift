// Optimizer: docs/model.md's AdamW (decoupled decay on 2-D tensors only), global-norm clipping and
// the warmup + cosine schedule. Works on flat buffers; only the decay mask knows the layout.

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

public struct OptimizerConfig: Codable, Equatable, Sendable {
    public var beta1: Float = 0.9
    public var beta2: Float = 0.95
    public var eps: Float = 1e-8
    public var weightDecay: Float = 0.1
    public var gradClip: Float = 1.0
    public init() {}
}

public struct LearningRateSchedule: Codable, Equatable, Sendable {
    public var maxLR: Double, minLR: Double, warmup: Int, totalSteps: Int
    /// A run resumed with more or fewer steps than it planned: from `step` on, the rate decays
    /// by cosine from `rate` (the old schedule's at that step) to minLR at totalSteps.
    public struct Tail: Codable, Equatable, Sendable {
        public let step: Int, rate: Double
        public init(step: Int, rate: Double) { self.step = step; self.rate = rate }
    }
    public var tail: Tail?

    public init(maxLR: Double, minLR: Double, warmup: Int, totalSteps: Int, tail: Tail? = nil) {
        self.maxLR = maxLR; self.minLR = minLR; self.warmup = warmup; self.totalSteps = totalSteps; self.tail = tail
    }

    /// Learning rate at 1-based step t: linear warmup while t < warmup, then cosine to minLR
    /// (from the tail's step on, from its rate).
    public func rate(atStep t: Int) -> Double {
        if let tail, t >= tail.step {
            let progress = min(1, Double(t - tail.step) / Double(max(1, totalSteps - tail.step)))
            return minLR + 0.5 * (tail.rate - minLR) * (1 + cos(Double.pi * progress))
        }
        if t < warmup { return maxLR * Double(t) / Double(warmup) }
        let progress = min(1, Double(t - warmup) / Double(max(1, totalSteps - warmup)))
        return minLR + 0.5 * (maxLR - minLR) * (1 + cos(Double.pi * progress))
    }

    /// This schedule, resumed after `step` of a run that followed `saved`: the saved one when
    /// both plan the same steps; the same without a tail while warmup is not over (its rates do
    /// not depend on the total); otherwise a tail from the saved rate at `step`, so the rate
    /// never jumps.
    public func resuming(_ saved: LearningRateSchedule, after step: Int) -> LearningRateSchedule {
        guard saved.totalSteps != totalSteps else { return saved }
        var resumed = self
        resumed.tail = step >= saved.warmup || saved.tail != nil ? Tail(step: step, rate: saved.rate(atStep: step)) : nil
        return resumed
    }

    /// One line for the run header.
    public var summary: String {
        let decay = tail.map { "from \($0.rate) at step \($0.step) (resumed with a new total), cosine" } ?? "warmup \(warmup), cosine"
        return "lr \(maxLR) → \(minLR): \(decay) to step \(totalSteps)"
    }
}

/// Global L2 norm of a flat buffer; blocks of 8-wide float sums added in double, in a fixed order.
public func globalNorm(_ values: UnsafeBufferPointer<Float>) -> Double { sumOfSquares(values).squareRoot() }

/// Σ values², in blocks of 8-wide float sums added in double, in a fixed order (a shard's part
/// of the squared global norm).
public func sumOfSquares(_ values: UnsafeBufferPointer<Float>) -> Double {
    guard let base = values.baseAddress else { return 0 }
    let n = values.count
    var total = 0.0
    var start = 0
    while start < n {
        let end = min(n, start + 4096)
        var acc = Vec()
        forEachChunk(end - start) { i, w in let v = load(base + start + i, w); acc += v * v }
        total += Double(acc.sum())
        start = end
    }
    return total
}

/// The factor that scales a gradient of norm `norm` down to at most `maxNorm`.
public func clipScale(norm: Double, maxNorm: Float) -> Float {
    norm > Double(maxNorm) ? Float(Double(maxNorm) / norm) : 1
}

public final class AdamW {
    /// A run of elements in one tensor: where its parameters, its gradient and its moments lie.
    struct Segment {
        let parameter: Int, gradient: Int, moment: Int, count: Int
        let decayed: Bool
    }

    /// One owned parameter range and the indices of its segments.
    struct OwnedRange {
        let parameters: Range<Int>, segments: Range<Int>
    }

    /// Split points of an owned range between threads fall on multiples of this many elements
    /// (one 64-byte cache line of floats), so no two threads write the same line of parameters.
    public static let partAlignment = 16

    public let config: OptimizerConfig
    /// First and second moments of the owned elements, in `owned` order (flat in parameter
    /// layout when one rank owns everything).
    public let m: UnsafeMutableBufferPointer<Float>, v: UnsafeMutableBufferPointer<Float>
    /// Steps taken so far (t of the last update).
    public var step: Int = 0
    private let segments: [Segment]
    private let owned: [OwnedRange]
    /// The current step's coefficients, set by `beginUpdate` for every part to read.
    private var lr: Float = 0, gradScale: Float = 1, correction1: Float = 1, correction2: Float = 1

    /// Moments for every parameter; the gradient is laid out like the parameters.
    public convenience init(layout: ParameterLayout, config: OptimizerConfig) {
        self.init(layout: layout, config: config, owned: [(0..<layout.count, 0)])
    }

    /// Moments for the `owned` parameter ranges only (a rank's shard), packed in that order;
    /// each range's gradient starts at its `gradient` offset. AdamW is elementwise, so a range
    /// may cut through a tensor: decay follows the tensor each element lies in.
    public init(layout: ParameterLayout, config: OptimizerConfig, owned: [(parameters: Range<Int>, gradient: Int)]) {
        self.config = config
        var segments: [Segment] = [], ranges: [OwnedRange] = [], moment = 0
        for (range, gradient) in owned {
            let first = segments.count
            for tensor in layout.tensors {
                let part = range.clamped(to: tensor.range)
                guard !part.isEmpty else { continue }
                let shift = part.lowerBound - range.lowerBound
                segments.append(Segment(parameter: part.lowerBound, gradient: gradient + shift, moment: moment + shift,
                                        count: part.count, decayed: tensor.isMatrix))
            }
            ranges.append(OwnedRange(parameters: range, segments: first..<segments.count))
            moment += range.count
        }
        self.segments = segments
        self.owned = ranges
        m = .allocate(capacity: moment); m.initialize(repeating: 0)
        v = .allocate(capacity: moment); v.initialize(repeating: 0)
    }

    deinit { m.deallocate(); v.deallocate() }

    /// The number of owned ranges, in the order updates visit them.
    public var ownedRanges: Int { owned.count }

    /// One update of the owned elements: g = gradScale·grads; moments; p −= lr·(m̂/(√v̂ + eps) + wd·p).
    /// `rangeUpdated(i)` follows owned range i, in order.
    public func update(_ params: UnsafeMutablePointer<Float>, grads: UnsafePointer<Float>, lr: Double, gradScale: Float,
                       rangeUpdated: (Int) -> Void = { _ in }) {
        beginUpdate(lr: lr, gradScale: gradScale)
        updatePart(0, of: 1, params, grads: grads, rangeUpdated: rangeUpdated)
    }

    /// Starts an update split into parts (one per thread): counts the step and fixes its
    /// coefficients. Then every part in 0..<parts must run `updatePart` once, on any thread.
    public func beginUpdate(lr: Double, gradScale: Float) {
        step += 1
        let t = Double(step)
        correction1 = Float(1 - pow(Double(config.beta1), t))
        correction2 = Float(1 - pow(Double(config.beta2), t))
        self.lr = Float(lr)
        self.gradScale = gradScale
    }

    /// Part `part` of `parts` of the update begun by `beginUpdate`: the part-th contiguous piece
    /// of every owned range, in order, cut at multiples of `partAlignment` elements. The pieces
    /// are disjoint and the update elementwise, so any split gives the bits of one thread's.
    /// `rangeUpdated(i)` follows this part's piece of owned range i (empty pieces included).
    public func updatePart(_ part: Int, of parts: Int, _ params: UnsafeMutablePointer<Float>, grads: UnsafePointer<Float>,
                           rangeUpdated: (Int) -> Void = { _ in }) {
        let c = config, moments = m.baseAddress!, squares = v.baseAddress!
        for (index, range) in owned.enumerated() {
            let piece = Self.piece(part, of: parts, range.parameters)
            for s in segments[range.segments] {
                let elements = (s.parameter..<(s.parameter + s.count)).clamped(to: piece)
                guard !elements.isEmpty else { continue }
                let shift = elements.lowerBound - s.parameter
                adamWKernel(params + s.parameter + shift, moments + s.moment + shift, squares + s.moment + shift, grads + s.gradient + shift,
                            count: elements.count, lr: lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps,
                            weightDecay: s.decayed ? c.weightDecay : 0, correction1: correction1, correction2: correction2,
                            gradScale: gradScale)
            }
            rangeUpdated(index)
        }
    }

    /// The part-th of `parts` contiguous pieces of `range`, its inner ends rounded up to a
    /// multiple of `partAlignment`.
    public static func piece(_ part: Int, of parts: Int, _ range: Range<Int>) -> Range<Int> {
        func cut(_ k: Int) -> Int {
            if k == 0 { return range.lowerBound }
            if k == parts { return range.upperBound }
            let point = range.lowerBound + range.count * k / parts
            return min(range.upperBound, (point + partAlignment - 1) / partAlignment * partAlignment)
        }
        return cut(part)..<cut(part + 1)
    }
}

@inline(__always)
private func adamWKernel(_ p: FloatPointer, _ m: FloatPointer, _ v: FloatPointer, _ g: ConstFloatPointer, count: Int,
                         lr: Float, beta1: Float, beta2: Float, eps: Float, weightDecay: Float,
                         correction1: Float, correction2: Float, gradScale: Float) {
    forEachChunk(count) { i, w in
        let grad = load(g + i, w) * gradScale
        let mi = beta1 * load(m + i, w) + (1 - beta1) * grad
        let vi = beta2 * load(v + i, w) + (1 - beta2) * grad * grad
        let pi = load(p + i, w)
        let update = (mi / correction1) / ((vi / correction2).squareRoot() + eps) + weightDecay * pi
        store(mi, m + i, w)
        store(vi, v + i, w)
        store(pi - lr * update, p + i, w)
    }
}

/// DiLoCo's outer optimizer: SGD with Nesterov momentum (PyTorch's `SGD(nesterov=True)`,
/// dampening 0) on a pseudo-gradient, the workers' summed parameter change scaled by
/// `gradScale`: g = gradScale·Δ; b ← μ·b + g; θ ← θ − lr·(g + μ·b). With lr 1 and μ 0 it
/// replaces θ by the workers' mean.
public final class NesterovSGD {
    public let lr: Float, momentum: Float
    /// The momentum buffer b, laid out like the parameters.
    public let buffer: UnsafeMutableBufferPointer<Float>

    public init(count: Int, lr: Double, momentum: Double) {
        self.lr = Float(lr)
        self.momentum = Float(momentum)
        buffer = .allocate(capacity: count)
        buffer.initialize(repeating: 0)
    }

    deinit { buffer.deallocate() }

    public func update(_ params: UnsafeMutableBufferPointer<Float>, pseudoGradient: UnsafeBufferPointer<Float>, gradScale: Float) {
        precondition(params.count == buffer.count && pseudoGradient.count == buffer.count)
        let p = params.baseAddress!, b = buffer.baseAddress!, g = pseudoGradient.baseAddress!
        let lr = self.lr, mu = momentum
        forEachChunk(buffer.count) { i, w in
            let grad = load(g + i, w) * gradScale
            let bi = mu * load(b + i, w) + grad
            store(bi, b + i, w)
            store(load(p + i, w) - lr * (grad + mu * bi), p + i, w)
        }
    }
}
