// ExactTreeReduction: `--reduction exact`. Every rank holds the whole model and AdamW state;
// the batch is cut into micro-shards (leaves) whose gradients are summed along one fixed
// binary tree (TreeReducer), locally and then across ranks, so losses, gradients and
// checkpoints have the same bits at any power-of-two world size. One worker, one BLAS thread.

import GomlComm
import GomlCore

public final class ExactTreeReduction: ReplicatedStrategy {
    public let passes: PassPlan
    public let replica: ReplicatedOptimizer
    private let gradient: FloatBuffer   // [P] the tree's root
    private let tree: TreeReducer
    public let comm: Communicator

    /// Sequences per leaf of the tree: --micro-batch, default 1.
    static func leafSize(_ options: TrainingOptions) -> Int { options.microBatch ?? 1 }

    public static func validate(_ options: TrainingOptions, communication: CommunicationSettings, worldSize: Int) throws {
        if communication.compression != .none {
            throw ConfigError("--grad-compression \(communication.compression.rawValue) cannot be used with --reduction exact, whose tree sums float32 bits; drop one of them")
        }
        if options.precision == .bf16 {
            throw ConfigError("--reduction exact is bit-identical across world sizes in float32 only; use --precision fp32 (auto picks it) or --reduction allreduce")
        }
        let perRank = options.batch / worldSize, leaf = leafSize(options)
        if perRank % leaf != 0 {
            throw ConfigError("exact reduction: each rank's \(perRank) sequences must split into micro-shards of \(leaf); choose --micro-batch dividing \(perRank)")
        }
        if worldSize & (worldSize - 1) != 0 {
            throw ConfigError("exact reduction needs a power-of-two world size (got \(worldSize)) so ranks own whole subtrees; use 1, 2, 4, 8… ranks or --reduction allreduce")
        }
    }

    public static var float32Reason: String? { "--reduction exact is bit-identical in float32 only" }
    /// OpenBLAS's threaded sgemm splits some products differently from its single-threaded
    /// path and rounds them differently.
    public static var needsOneBLASThread: Bool { true }

    /// The leaf size shapes the tree, so it is part of the trajectory.
    public static func trajectoryDifferences(_ options: TrainingOptions, from saved: TrainingOptions) -> [String] {
        leafSize(options) == leafSize(saved) ? [] : ["micro-batch \(leafSize(saved)) → \(leafSize(options))"]
    }

    /// One worker, leaf by leaf.
    public static func passPlan(_ options: TrainingOptions, shard: Range<Int>, workers: Int) -> PassPlan {
        let leaf = leafSize(options)
        return PassPlan(firstSequence: shard.lowerBound, workers: 1, microBatch: leaf, passesPerWorker: shard.count / leaf)
    }

    public init(options: TrainingOptions, layout: ParameterLayout, comm: Communicator, shard: Range<Int>, workers: Int,
                communication: CommunicationSettings) {
        let leaf = Self.leafSize(options)
        passes = Self.passPlan(options, shard: shard, workers: workers)
        let gradient = FloatBuffer(count: layout.count)
        self.gradient = gradient
        replica = ReplicatedOptimizer(layout: layout, config: options.optimizer, gradient: gradient)
        tree = TreeReducer(result: gradient, leaves: options.batch / leaf, local: (shard.lowerBound / leaf)..<(shard.upperBound / leaf))
        self.comm = comm
    }

    public var summary: String {
        ReductionMode.exact.rawValue + (comm.size > 1 ? ", unsharded: its bits come from adding whole gradients along one tree, which a reduce-scatter would sum in another order" : "")
    }

    public func beginStep() {}

    /// Pass k is leaf k of this rank's subtree; each overwrites its own partial.
    public func gradientBuffer(worker: Int, pass: Int) -> (buffer: FloatBuffer, accumulate: Bool) {
        (tree.leafBuffer(pass), false)
    }

    /// Nothing starts early: ranks exchange whole subtree sums after backward.
    public func gradientsFinal(worker: Int, from offset: Int) {}

    public func passFinished(worker: Int, pass: Int) { tree.leafWritten(pass) }

    /// The tree's exchanges block; all of their time is the step's reduce phase, none hidden.
    public func reduce() -> Double {
        tree.reduceAcrossRanks(comm)
        return 0
    }

    public var reducedGradient: UnsafeMutableBufferPointer<Float> { gradient.pointer }
}
