// TrainingOptions: everything that decides a training run's numbers. Codable, so checkpoints
// carry it and a resume can tell which options changed.

import GomlComm
import GomlCore

public struct TrainingOptions: Codable, Equatable, Sendable {
    public var model: ModelConfig
    /// Global sequences per step, split evenly over ranks.
    public var batch: Int = 12
    public var steps: Int = 1000
    public var lr: Double = 1e-3
    public var minLR: Double = 1e-4
    public var warmup: Int = 100
    public var optimizer = OptimizerConfig()
    public var seed: UInt64 = 1337
    public var evalEvery: Int = 250
    public var evalBatches: Int = 50
    public var sampleEvery: Int = 0
    public var sampleTokens: Int = 200
    public var logEvery: Int = 10
    public var ckptEvery: Int = 0
    public var keep: Int = 3
    public var reduction: ReductionMode = .allReduce
    /// Sequences per forward/backward pass: the leaf of the exact reduction tree (default 1),
    /// or in allreduce mode the micro-batches a rank accumulates (default: its whole shard).
    public var microBatch: Int? = nil
    /// Ranks compare a parameter checksum every this many steps.
    public var checksumEvery: Int = 50
    /// Matrix-product arithmetic (bf16: bfloat16 operands, float32 accumulation).
    public var precision: Precision = .fp32
    /// Low-communication training (DiLoCo): workers that sync every `syncEvery` steps; nil
    /// trains synchronously (every rank one replica, every step).
    public var outer: OuterSyncOptions? = nil

    public init(model: ModelConfig) { self.model = model }

    public var schedule: LearningRateSchedule {
        LearningRateSchedule(maxLR: lr, minLR: minLR, warmup: warmup, totalSteps: steps)
    }

    /// What differs from `other` in ways that change a run's numbers, one phrase each: a
    /// resumption continues the same trajectory only when this is empty.
    public func sameTrajectory(as other: TrainingOptions) -> [String] {
        var diffs: [String] = []
        if model != other.model { diffs.append("model \(other.model.summary) → \(model.summary)") }
        if batch != other.batch { diffs.append("batch \(other.batch) → \(batch)") }
        if lr != other.lr || minLR != other.minLR || warmup != other.warmup {
            diffs.append("schedule lr \(other.lr)/\(other.minLR)/warmup \(other.warmup) → \(lr)/\(minLR)/\(warmup)")
        }
        if optimizer != other.optimizer { diffs.append("optimizer settings") }
        if seed != other.seed { diffs.append("seed \(other.seed) → \(seed)") }
        if precision != other.precision { diffs.append("precision \(other.precision.rawValue) → \(precision.rawValue)") }
        if outer != other.outer { diffs.append("low-communication \(other.outer?.summary ?? "off") → \(outer?.summary ?? "off")") }
        return diffs + reduction.strategy.trajectoryDifferences(self, from: other)
    }

    /// Flag-level checks that need no data and no ranks (the strategy adds its own).
    public func validate(worldSize: Int) throws {
        try model.validate()
        func positive(_ name: String, _ v: Int) throws {
            if v <= 0 { throw ConfigError("--\(name) is \(v); it must be a positive integer") }
        }
        try positive("batch", batch); try positive("steps", steps); try positive("eval-batches", evalBatches)
        if let microBatch { try positive("micro-batch", microBatch) }
        if warmup < 0 { throw ConfigError("--warmup is \(warmup); it must be ≥ 0") }
        if !(lr > 0) || !(minLR >= 0) { throw ConfigError("--lr must be > 0 and --min-lr ≥ 0") }
        if !(optimizer.beta1 >= 0 && optimizer.beta1 < 1 && optimizer.beta2 >= 0 && optimizer.beta2 < 1) {
            throw ConfigError("--beta1 and --beta2 must lie in [0, 1)")
        }
        if !(optimizer.gradClip > 0) { throw ConfigError("--grad-clip must be > 0") }
        if let outer {
            if outer.syncEvery < 1 { throw ConfigError("--sync-every is \(outer.syncEvery); it must be a positive integer (1: synchronous training)") }
            if reduction == .exact {
                throw ConfigError("--reduction exact cannot run with --sync-every \(outer.syncEvery): its bit-exactness holds for synchronous steps only; use --reduction allreduce or --sync-every 1")
            }
            if !(outer.lr > 0) { throw ConfigError("--outer-lr is \(outer.lr); it must be > 0") }
            if !(outer.momentum >= 0 && outer.momentum < 1) { throw ConfigError("--outer-momentum is \(outer.momentum); it must lie in [0, 1)") }
        }
        if batch % worldSize != 0 {
            throw ConfigError("global batch \(batch) is not divisible by the world size \(worldSize); choose --batch as a multiple of \(worldSize) or run on a number of ranks that divides \(batch)")
        }
    }
}

/// DiLoCo's settings: `workers` groups of ranks each train on their own data and sync every
/// `syncEvery` steps through an outer Nesterov step (docs/low-communication.md).
public struct OuterSyncOptions: Codable, Equatable, Sendable {
    public var syncEvery: Int
    public var workers: Int
    /// Defaults: plain averaging, the best of the settings measured on the nano recipe
    /// (docs/low-communication.md); the paper's 0.7 / 0.9 overshot there.
    public var lr: Double = 1
    public var momentum: Double = 0
    /// How the pseudo-gradient travels between workers.
    public var compression: GradientCompression = .none
    /// The outer all-reduce runs during the next inner step, and the outer update lands one
    /// step late, under that step's local progress (docs/low-communication.md).
    public var overlapped = false

    public init(syncEvery: Int, workers: Int) { self.syncEvery = syncEvery; self.workers = workers }

    /// The gradient-norm clip of a worker, given the clip of the global batch. A worker's
    /// gradient averages 1/workers of the batch, so its noise, most of the norm late in a run,
    /// is √workers larger: unscaled, the nano recipe's workers (norms 1.4–1.8 against
    /// synchronous training's 1.0–1.15) were clipped to about 60% all run long
    /// (docs/low-communication.md, "Clipping a worker").
    public func workerGradClip(_ globalClip: Float) -> Float { globalClip * Float(Double(workers).squareRoot()) }

    public var summary: String {
        "\(workers) worker(s), sync every \(syncEvery), outer lr \(lr) momentum \(momentum), \(compression == .none ? "float32" : "bf16") pseudo-gradient\(overlapped ? ", overlapped one step" : "")"
    }
}
