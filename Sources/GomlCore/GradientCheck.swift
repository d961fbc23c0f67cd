// GradientCheck: finite-difference proof of the analytic backward pass on a small random
// model. Central differences in float32 are noisy, so each tensor is probed where the signal
// is strongest: its largest-gradient elements, a random element, and a random direction
// across the whole tensor (a directional derivative sums every element's contribution).

public struct GradientCheckResult: Sendable {
    public let tensor: String
    /// Worst |analytic − numeric| / max(|analytic|, |numeric|) over the probes of this tensor.
    public let worstRelativeError: Double
    public let probes: Int
}

/// Deliberate mistakes in the backward pass that the gradient check must catch (hidden
/// `goml-dist gradcheck --fault-backward`): each is one realistic slip in one kernel.
public enum BackwardFault: String, Sendable, CaseIterable {
    /// LayerNorm's weight gradient drops its x̂ factor (the bias's Σ dOut, copied): every norm
    /// weight's gradient is wrong, nothing else (the input gradient is right).
    case layerNormWeight = "layernorm-weight"
    /// Attention's backward masks the diagonal as well as the future (an off-by-one causal
    /// mask): no gradient flows through a position's score with itself. Wrong from the last
    /// block's wq and wk down (its wv, wo and feed-forward stay right).
    case attentionDiagonal = "attention-diagonal"

    /// The attention kernel's fault this stands for.
    var attentionFault: AttentionFault? { self == .attentionDiagonal ? .maskedDiagonal : nil }
}

public enum GradientCheck {
    /// Worst relative error a right backward stays under (float32 differences, both FFN kinds).
    public static let tolerance = 3e-2

    /// A small model that still has every parameter kind, heads > 1 and a real causal mask.
    public static func smallConfig(_ kind: FFNKind) -> ModelConfig {
        ModelConfig(vocab: 32, dim: 16, layers: 2, heads: 2, ffn: 24, seqLen: 8, ffnKind: kind)
    }

    /// Checks every tensor of `config`'s model on one random batch. `std` is the init scale:
    /// larger than docs/model.md's 0.02 so that every nonlinearity is exercised away from identity.
    /// `backwardFault` breaks the backward pass on purpose: the check must then fail.
    public static func run(config: ModelConfig, batch: Int = 2, seed: UInt64 = 7, std: Double = 0.3,
                           step h: Float = 1e-3, backwardFault: BackwardFault? = nil) -> [GradientCheckResult] {
        var problem = Problem(config: config, batch: batch, seed: seed, std: std)
        return problem.check(problem.analyticGradient(fault: backwardFault), step: h)
    }

    /// `goml-dist gradcheck`'s lines for each FFN kind's small model, and whether every tensor's
    /// worst relative error stays within `tolerance`.
    public static func report(kinds: [FFNKind], seed: UInt64, tolerance: Double, backwardFault: BackwardFault?) -> (lines: [String], passed: Bool) {
        var lines: [String] = [], worstOverall = 0.0
        for kind in kinds {
            let config = smallConfig(kind)
            lines.append("gradcheck \(config.summary), batch 2, central differences")
            for r in run(config: config, seed: seed, backwardFault: backwardFault) {
                worstOverall = max(worstOverall, r.worstRelativeError)
                let flag = r.worstRelativeError <= tolerance ? "ok" : "FAIL"
                lines.append("  \(r.tensor.padding(toLength: 36, withPad: " ", startingAt: 0)) worst rel err \(String(format: "%.2e", r.worstRelativeError)) over \(r.probes) probes  \(flag)")
            }
        }
        lines.append("gradcheck: worst relative error \(String(format: "%.2e", worstOverall)), tolerance \(tolerance)")
        return (lines, worstOverall <= tolerance && !worstOverall.isNaN)
    }

    /// A random model, parameters and batch, and the finite-difference probes of a gradient on them.
    struct Problem {
        let layout: ParameterLayout
        let model: Transformer
        let params: [Float]
        var rng: Xoshiro256

        init(config: ModelConfig, batch: Int, seed: UInt64, std: Double) {
            let layout = ParameterLayout(config)
            var rng = Xoshiro256(seed: seed)
            var params = [Float](repeating: 0, count: layout.count)
            params.withUnsafeMutableBufferPointer { layout.initialise($0, rng: &rng, std: std) }
            // Norm parameters away from 1/0 so their gradients are generic too.
            for t in layout.tensors where !t.isMatrix {
                for i in t.range { params[i] += Float(0.2 * rng.nextGaussian()) }
            }
            let model = Transformer(config: config, batch: batch)
            for i in 0..<model.rows {
                model.tokens[i] = Int32(rng.nextBelow(config.vocab))
                model.targets[i] = Int32(rng.nextBelow(config.vocab))
            }
            (self.layout, self.model, self.params, self.rng) = (layout, model, params, rng)
        }

        /// The backward pass's gradient of the mean loss.
        func analyticGradient(fault: BackwardFault? = nil) -> [Float] {
            var grads = [Float](repeating: 0, count: layout.count)
            model.backwardFault = fault
            defer { model.backwardFault = nil }
            params.withUnsafeBufferPointer { p in
                model.forward(p.baseAddress!, gradScale: 1 / Float(model.rows))
                grads.withUnsafeMutableBufferPointer { model.backward(p.baseAddress!, $0.baseAddress!) }
            }
            return grads
        }

        /// Compares `grads` with central differences of the loss, tensor by tensor.
        mutating func check(_ grads: [Float], step h: Float = 1e-3) -> [GradientCheckResult] {
            let params = self.params, model = self.model
            func loss(_ probe: [Float]) -> Double {
                probe.withUnsafeBufferPointer { model.forward($0.baseAddress!) }
                return model.meanLoss
            }
            // Five-point stencil: error O(h⁴), so h can be large enough to rise above float32 noise.
            func derivative(along u: [Float], of t: TensorView) -> Double {
                func shifted(_ k: Float) -> Double {
                    var probe = params
                    for (j, i) in t.range.enumerated() { probe[i] += k * h * u[j] }
                    return loss(probe)
                }
                return (8 * (shifted(1) - shifted(-1)) - (shifted(2) - shifted(-2))) / (12 * Double(h))
            }
            return layout.tensors.map { t in
                var worst = 0.0, probes = 0
                func record(analytic: Double, numeric: Double) {
                    let denom = max(abs(analytic), abs(numeric), 1e-9)
                    worst = max(worst, abs(analytic - numeric) / denom)
                    probes += 1
                }
                // Elements: the three largest gradients and one random element with a usable gradient.
                let byMagnitude = t.range.sorted { abs(grads[$0]) > abs(grads[$1]) }
                var elements = Array(byMagnitude.prefix(3))
                let usable = byMagnitude.filter { abs(grads[$0]) > 0.1 * abs(grads[byMagnitude[0]]) }
                if let extra = usable.randomElement(using: &rng), !elements.contains(extra) { elements.append(extra) }
                for i in elements {
                    var unit = [Float](repeating: 0, count: t.count)
                    unit[i - t.offset] = 1
                    record(analytic: Double(grads[i]), numeric: derivative(along: unit, of: t))
                }
                // Direction u over the whole tensor: dL/dε at ε = 0 equals g·u. Random magnitudes with
                // the gradient's signs, so the terms add up instead of cancelling into noise.
                var direction = [Float](repeating: 0, count: t.count)
                for (j, i) in t.range.enumerated() {
                    direction[j] = Float(abs(rng.nextGaussian())) * (grads[i] < 0 ? -1 : 1)
                }
                var analytic = 0.0
                for (j, i) in t.range.enumerated() { analytic += Double(grads[i]) * Double(direction[j]) }
                record(analytic: analytic, numeric: derivative(along: direction, of: t))
                return GradientCheckResult(tensor: t.name, worstRelativeError: worst, probes: probes)
            }
        }
    }
}
