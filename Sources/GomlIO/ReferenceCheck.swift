// ReferenceCheck: recompute a reference dump (fixtures/README.md layout) and compare it
// tensor by tensor — logits, loss, every gradient, grad norm, parameters after two AdamW
// steps — with the fixtures' error measures and tolerances. Shared by `goml-dist verify`
// and the tests. At bf16 the measures are the ones bfloat16 rounding leaves meaningful
// (README "Precision"): relative loss, 1 − cosine of each gradient and of each parameter update.

import Foundation
import GomlCore

public struct Comparison: Sendable {
    public let quantity: String
    /// The measured error, in the units `measure` names.
    public let error: Double
    public let tolerance: Double
    public let measure: String
    public var passed: Bool { error <= tolerance && !error.isNaN }

    public var line: String {
        let q = quantity.padding(toLength: 44, withPad: " ", startingAt: 0)
        let m = measure.padding(toLength: 22, withPad: " ", startingAt: 0)
        return "\(q) \(m) \(String(format: "%.3e", error))  tol \(String(format: "%.1e", tolerance))  \(passed ? "ok" : "FAIL")"
    }
}

public struct ReferenceDump {
    public let config: ModelConfig
    public let batch: Int
    public let optimizer: OptimizerConfig
    public let lrStep1: Double, lrStep2: Double
    public let file: SafetensorsFile

    public init(path: String) throws {
        let file = try SafetensorsFile(path: path)
        self.file = file
        func json(_ key: String) throws -> [String: Any] {
            guard let text = file.metadata[key], let data = text.data(using: .utf8),
                  let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw SafetensorsError("\(path): metadata '\(key)' is missing or not a JSON object; not a reference dump")
            }
            return object
        }
        let configJSON = try json("config")
        let config: ModelConfig
        do {
            config = try JSONDecoder().decode(ModelConfig.self, from: JSONSerialization.data(withJSONObject: configJSON))
        } catch {
            throw SafetensorsError("\(path): metadata 'config' does not describe a model: \(error)")
        }
        try config.validate()
        self.config = config
        guard let b = configJSON["batch"] as? Int, b > 0 else { throw SafetensorsError("\(path): config.batch missing") }
        batch = b
        let opt = try json("optimizer")
        func number(_ key: String) throws -> Double {
            guard let n = opt[key] as? NSNumber else { throw SafetensorsError("\(path): optimizer.\(key) missing") }
            return n.doubleValue
        }
        var o = OptimizerConfig()
        o.beta1 = Float(try number("b1")); o.beta2 = Float(try number("b2")); o.eps = Float(try number("eps"))
        o.weightDecay = Float(try number("wd")); o.gradClip = Float(try number("clip"))
        optimizer = o
        lrStep1 = try number("lr_step1"); lrStep2 = try number("lr_step2")
    }

    /// The flat buffer made of `prefix.<name>` tensors in layout order.
    public func flat(_ prefix: String, _ layout: ParameterLayout) throws -> [Float] {
        var out = [Float](repeating: 0, count: layout.count)
        try out.withUnsafeMutableBufferPointer { buffer in
            for t in layout.tensors {
                let info = try file.tensor("\(prefix).\(t.name)")
                guard info.shape == t.shape else {
                    throw SafetensorsError("\(prefix).\(t.name) has shape \(info.shape), docs/model.md says \(t.shape)")
                }
                try file.copyFloats("\(prefix).\(t.name)", into: UnsafeMutableBufferPointer(rebasing: buffer[t.range]))
            }
        }
        return out
    }

    public func scalar(_ name: String) throws -> Double {
        let values = try file.floats(name)
        guard values.count == 1 else { throw SafetensorsError("\(name) should hold one value, has \(values.count)") }
        return Double(values[0])
    }

    /// Tolerances at bf16, from bfloat16's 8-bit significand (unit roundoff u = 2⁻⁸ ≈ 3.9e-3);
    /// README "Precision" gives the derivation.
    public static let bf16Logits = 6e-2, bf16Loss = 1e-2, bf16GradNorm = 2e-2, bf16Gradient = 5e-3, bf16Update = 1e-1

    /// Recomputes everything the dump holds and compares. Gradients of tensors named in
    /// `gradientFault` are scaled by 1.01 first (for proving that a wrong gradient fails).
    /// `precision` picks the products (and the measures); `bf16Fault` breaks the bf16 path and
    /// `attentionFault` attention's backward.
    public func compare(gradientFault: String? = nil, precision: Precision = .fp32, bf16Fault: BF16Fault? = nil,
                        attentionFault: AttentionFault? = nil) throws -> [Comparison] {
        let layout = ParameterLayout(config)
        let model = Transformer(config: config, batch: batch, products: makeProducts(precision, fault: bf16Fault),
                                attentionFault: attentionFault)
        let bf16 = precision == .bf16
        func oneMinusCosine(_ a: [Float], _ b: [Float], _ range: Range<Int>) -> Double {
            var ab = 0.0, aa = 0.0, bb = 0.0
            for i in range { ab += Double(a[i]) * Double(b[i]); aa += Double(a[i]) * Double(a[i]); bb += Double(b[i]) * Double(b[i]) }
            return aa == 0 && bb == 0 ? 0 : 1 - ab / max((aa * bb).squareRoot(), 1e-300)
        }
        let T = config.seqLen
        let tokens = try file.int32s("tokens"), targets = try file.int32s("targets")
        guard tokens.count == batch * T, targets.count == batch * T else {
            throw SafetensorsError("tokens/targets hold \(tokens.count)/\(targets.count) values, expected batch × seq_len = \(batch * T)")
        }
        for i in 0..<(batch * T) { model.tokens[i] = tokens[i]; model.targets[i] = targets[i] }
        var params = try flat("init", layout)
        var grads = [Float](repeating: 0, count: layout.count)
        let optimizer = AdamW(layout: layout, config: optimizer)
        var results: [Comparison] = []

        func relative(_ name: String, _ got: Double, _ want: Double, tol: Double) {
            results.append(Comparison(quantity: name, error: abs(got - want) / max(abs(want), 1e-30), tolerance: tol, measure: "rel err"))
        }
        func trainStep(lr: Double, lossName: String, normName: String, compareDetails: Bool) throws {
            grads.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
            params.withUnsafeBufferPointer { p in
                model.forward(p.baseAddress!, gradScale: 1 / Float(model.rows))
                grads.withUnsafeMutableBufferPointer { model.backward(p.baseAddress!, $0.baseAddress!) }
            }
            if let gradientFault, let view = layout.view(named: gradientFault) {
                for i in view.range { grads[i] *= 1.01 }
            }
            if compareDetails {
                let want = try file.floats("logits")
                let maxAbs = Double(want.map(abs).max() ?? 0)
                var err = 0.0
                for (i, w) in want.enumerated() { err = max(err, Double(abs(model.logits[i] - w))) }
                results.append(Comparison(quantity: "logits", error: err / max(maxAbs, 1e-30), tolerance: bf16 ? Self.bf16Logits : 1e-5,
                                          measure: "max abs / max |ref|"))
            }
            relative(lossName, model.meanLoss, try scalar(lossName), tol: bf16 ? Self.bf16Loss : 1e-5)
            if compareDetails && bf16 {
                let want = try flat("grad", layout)
                for t in layout.tensors {
                    results.append(Comparison(quantity: "grad.\(t.name)", error: oneMinusCosine(grads, want, t.range),
                                              tolerance: Self.bf16Gradient, measure: "1 - cosine"))
                }
            } else if compareDetails {
                let want = try flat("grad", layout)
                for t in layout.tensors {
                    var err = 0.0, maxAbs = 0.0
                    for i in t.range { err = max(err, Double(abs(grads[i] - want[i]))); maxAbs = max(maxAbs, Double(abs(want[i]))) }
                    results.append(Comparison(quantity: "grad.\(t.name)", error: err / max(maxAbs, 1e-30), tolerance: 1e-4,
                                              measure: "max abs / max |ref|"))
                }
            }
            let norm = grads.withUnsafeBufferPointer { globalNorm($0) }
            relative(normName, norm, try scalar(normName), tol: bf16 ? Self.bf16GradNorm : 1e-4)
            params.withUnsafeMutableBufferPointer { p in
                grads.withUnsafeBufferPointer { g in
                    optimizer.update(p.baseAddress!, grads: g.baseAddress!, lr: lr,
                                     gradScale: clipScale(norm: norm, maxNorm: self.optimizer.gradClip))
                }
            }
        }
        let initial = params
        func compareParams(_ prefix: String) throws {
            let want = try flat(prefix, layout)
            if bf16 {
                // The update since initialisation, as a direction: AdamW's first steps move every
                // weight by about lr, so a value comparison would only count sign flips of tiny gradients.
                let got = zip(params, initial).map { $0 - $1 }, reference = zip(want, initial).map { $0 - $1 }
                for t in layout.tensors {
                    results.append(Comparison(quantity: "\(prefix).\(t.name)", error: oneMinusCosine(got, reference, t.range),
                                              tolerance: Self.bf16Update, measure: "1 - cosine of update"))
                }
                return
            }
            for t in layout.tensors {
                var err = 0.0
                for i in t.range { err = max(err, Double(abs(params[i] - want[i]))) }
                results.append(Comparison(quantity: "\(prefix).\(t.name)", error: err, tolerance: 1e-5, measure: "max abs err"))
            }
        }
        try trainStep(lr: lrStep1, lossName: "loss", normName: "grad_norm", compareDetails: true)
        try compareParams("step1")
        try trainStep(lr: lrStep2, lossName: "step2_loss", normName: "step2_grad_norm", compareDetails: false)
        try compareParams("step2")
        return results
    }
}
