// ParameterLayout: every parameter's (name, shape, offset) in docs/model.md's flat order.
// The only place docs/model.md's tensor names live; parameters, gradients and Adam moments
// are flat buffers of `count` floats in this layout.

public struct TensorView: Sendable, Equatable {
    public let name: String
    public let shape: [Int]
    public let offset: Int
    public var count: Int { shape.reduce(1, *) }
    public var range: Range<Int> { offset..<(offset + count) }
    /// docs/model.md decays 2-D tensors (embedding and matrices) only.
    public var isMatrix: Bool { shape.count == 2 }
}

/// The views of one transformer block.
public struct LayerViews: Sendable {
    public let attentionNormWeight, attentionNormBias: TensorView
    public let wq, wk, wv, wo: TensorView
    public let ffnNormWeight, ffnNormBias: TensorView
    public let w1, w2: TensorView
    public let w3: TensorView?   // SwiGLU only
}

public struct ParameterLayout: Sendable {
    public let config: ModelConfig
    public let tensors: [TensorView]
    public let embedding: TensorView
    public let layers: [LayerViews]
    public let normWeight, normBias, output: TensorView
    public let count: Int

    public init(_ config: ModelConfig) {
        let V = config.vocab, C = config.dim, F = config.ffn
        var tensors: [TensorView] = []
        var offset = 0
        func add(_ name: String, _ shape: [Int]) -> TensorView {
            let view = TensorView(name: name, shape: shape, offset: offset)
            offset += view.count
            tensors.append(view)
            return view
        }
        embedding = add("tok_embeddings.weight", [V, C])
        var layers: [LayerViews] = []
        for l in 0..<config.layers {
            let p = "layers.\(l)."
            let anw = add(p + "attention_norm.weight", [C]), anb = add(p + "attention_norm.bias", [C])
            let wq = add(p + "attention.wq.weight", [C, C]), wk = add(p + "attention.wk.weight", [C, C])
            let wv = add(p + "attention.wv.weight", [C, C]), wo = add(p + "attention.wo.weight", [C, C])
            let fnw = add(p + "ffn_norm.weight", [C]), fnb = add(p + "ffn_norm.bias", [C])
            let w1 = add(p + "feed_forward.w1.weight", [F, C]), w2 = add(p + "feed_forward.w2.weight", [C, F])
            let w3 = config.ffnKind == .swiglu ? add(p + "feed_forward.w3.weight", [F, C]) : nil
            layers.append(LayerViews(attentionNormWeight: anw, attentionNormBias: anb, wq: wq, wk: wk, wv: wv, wo: wo,
                                     ffnNormWeight: fnw, ffnNormBias: fnb, w1: w1, w2: w2, w3: w3))
        }
        normWeight = add("norm.weight", [C])
        normBias = add("norm.bias", [C])
        output = add("output.weight", [V, C])
        self.layers = layers
        self.tensors = tensors
        self.count = offset
        self.config = config
    }

    public func view(named name: String) -> TensorView? { tensors.first { $0.name == name } }

    /// The tensors read only as operands of matrix products: every 2-D tensor but the embedding,
    /// which is looked up. At bf16 the products round them to bfloat16 whenever they read them.
    public var productOperands: [TensorView] { tensors.filter { $0.isMatrix && $0.offset != embedding.offset } }

    /// docs/model.md's default initialisation, drawn in flat order from `rng`: matrices and embedding
    /// ~ N(0, 0.02), wo and w2 ~ N(0, 0.02/sqrt(2L)), LayerNorm weights 1, biases 0.
    public func initialise(_ params: UnsafeMutableBufferPointer<Float>, rng: inout Xoshiro256, std: Double = 0.02) {
        precondition(params.count == count)
        let residualStd = std / Double(2 * config.layers).squareRoot()
        for t in tensors {
            if t.isMatrix {
                let s = t.name.hasSuffix("wo.weight") || t.name.hasSuffix("w2.weight") ? residualStd : std
                for i in t.range { params[i] = Float(rng.nextGaussian() * s) }
            } else {
                let value: Float = t.name.hasSuffix(".weight") ? 1 : 0
                for i in t.range { params[i] = value }
            }
        }
    }
}
