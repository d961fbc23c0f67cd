// ModelConfig: the model's hyper-parameters, named presets and validation.
// One Codable value that travels with checkpoints; knows nothing of training or I/O.

/// The feed-forward block: docs/model.md's SwiGLU, or a two-matrix GELU (tanh approximation) MLP.
public enum FFNKind: String, Codable, Sendable, CaseIterable {
    case swiglu, gelu
}

public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public struct ModelConfig: Codable, Equatable, Hashable, Sendable {
    public var vocab: Int
    public var dim: Int
    public var layers: Int
    public var heads: Int
    public var ffn: Int
    public var seqLen: Int
    public var normEps: Float
    public var ropeBase: Double
    public var ffnKind: FFNKind

    enum CodingKeys: String, CodingKey {
        case vocab, dim, layers, heads, ffn, seqLen = "seq_len", normEps = "norm_eps"
        case ropeBase = "rope_base", ffnKind = "ffn_kind"
    }

    public init(vocab: Int = 256, dim: Int, layers: Int, heads: Int, ffn: Int, seqLen: Int,
                normEps: Float = 1e-5, ropeBase: Double = 10000, ffnKind: FFNKind = .swiglu) {
        self.vocab = vocab; self.dim = dim; self.layers = layers; self.heads = heads
        self.ffn = ffn; self.seqLen = seqLen; self.normEps = normEps; self.ropeBase = ropeBase
        self.ffnKind = ffnKind
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        vocab = try c.decodeIfPresent(Int.self, forKey: .vocab) ?? 256
        dim = try c.decode(Int.self, forKey: .dim)
        layers = try c.decode(Int.self, forKey: .layers)
        heads = try c.decode(Int.self, forKey: .heads)
        ffn = try c.decode(Int.self, forKey: .ffn)
        seqLen = try c.decode(Int.self, forKey: .seqLen)
        normEps = try c.decodeIfPresent(Float.self, forKey: .normEps) ?? 1e-5
        ropeBase = try c.decodeIfPresent(Double.self, forKey: .ropeBase) ?? 10000
        ffnKind = try c.decodeIfPresent(FFNKind.self, forKey: .ffnKind) ?? .swiglu
    }

    public static let tiny = ModelConfig(dim: 64, layers: 2, heads: 4, ffn: 172, seqLen: 64)
    public static let nano = ModelConfig(dim: 128, layers: 4, heads: 4, ffn: 344, seqLen: 64)
    public static let small = ModelConfig(dim: 384, layers: 6, heads: 6, ffn: 1024, seqLen: 256)
    /// GPT-2-small scale (about 85M weights) at T 1024.
    public static let base = ModelConfig(dim: 768, layers: 12, heads: 12, ffn: 2048, seqLen: 1024)
    public static let presets: [(name: String, config: ModelConfig)] = [("tiny", tiny), ("nano", nano), ("small", small), ("base", base)]

    public static func preset(named name: String) throws -> ModelConfig {
        guard let found = presets.first(where: { $0.name == name }) else {
            throw ConfigError("unknown config '\(name)': use one of \(presets.map(\.name).joined(separator: ", "))")
        }
        return found.config
    }

    /// The batch size the anchors (and `bench`) use for each preset.
    public static func defaultBatch(forPreset name: String) -> Int {
        switch name { case "tiny": 8; case "nano": 12; case "small": 8; case "base": 2; default: 8 }
    }

    public var headDim: Int { dim / heads }

    /// Throws a one-line error naming the bad field and the fix.
    public func validate() throws {
        for (name, value) in [("vocab", vocab), ("dim", dim), ("layers", layers), ("heads", heads),
                              ("ffn", ffn), ("seq-len", seqLen)] where value <= 0 {
            throw ConfigError("invalid config: \(name) is \(value); it must be a positive integer")
        }
        guard dim % heads == 0 else {
            throw ConfigError("invalid config: dim \(dim) is not divisible by heads \(heads); choose dim = heads × an even head size")
        }
        guard headDim % 2 == 0 else {
            throw ConfigError("invalid config: head size dim/heads = \(headDim) is odd; RoPE needs an even head size")
        }
        guard vocab <= 256 else {
            throw ConfigError("invalid config: vocab \(vocab) exceeds 256; models are byte-level")
        }
        guard normEps > 0, normEps.isFinite else { throw ConfigError("invalid config: norm_eps must be positive") }
        guard ropeBase > 1, ropeBase.isFinite else { throw ConfigError("invalid config: rope_base must be > 1") }
        let big = [dim, ffn, seqLen, layers].contains { $0 > 1 << 16 }
        guard !big else { throw ConfigError("invalid config: a size exceeds 65536") }
    }

    /// Weights used in matrix products (the embedding gather is not one).
    public var matmulParameterCount: Int {
        let ffnMatrices = ffnKind == .swiglu ? 3 : 2
        return layers * (4 * dim * dim + ffnMatrices * dim * ffn) + vocab * dim
    }

    /// Training FLOPs per token: 6·N_mm + 12·L·C·T (anchors' convention).
    public var flopsPerToken: Double {
        6 * Double(matmulParameterCount) + 12 * Double(layers * dim * seqLen)
    }

    public var summary: String {
        "C\(dim) L\(layers) H\(heads) F\(ffn) T\(seqLen) V\(vocab) \(ffnKind.rawValue)"
    }
}
