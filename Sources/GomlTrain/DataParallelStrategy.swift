// DataParallelStrategy: how this rank's gradients become the update, behind one protocol. A
// strategy is chosen once, from `TrainingOptions.reduction`, and owns the parameters, the
// gradient buffers, the buckets, the collectives and the optimizer step; the Trainer owns the
// models, worker threads, data and losses, and calls the strategy at fixed points of a step:
//
//     strategy.beginStep()
//     pool.run(passes)            // forward waits in strategy.parametersNeeded(upTo:); each pass writes
//                                 // strategy.gradientBuffer(worker:pass:); backward
//                                 // reports strategy.gradientsFinal(worker:from:)
//     strategy.reduce()           // across workers and ranks
//     strategy.finishStep(lr:…)   // norm, clip, AdamW (written once, below) on the same worker threads
//
// TrainingSetup picks the mode (sharding is the default on several ranks); ReductionMode.strategy
// maps it to its implementation, and every policy that differs between modes is a requirement
// below. ReplicatedAllReduce and ExactTreeReduction hold the whole state on every rank
// (ReplicatedStrategy); ShardedAllReduce keeps the AdamW moments of one slice per rank
// (reduce-scatter the gradient, update the slice, all-gather the parameters).

import GomlComm
import GomlCore

/// The persisted choice of strategy (checkpoints store it with the options).
public enum ReductionMode: String, Codable, Sendable, CaseIterable {
    case allReduce = "allreduce", exact, sharded

    /// The strategy this mode runs: the one place a mode is mapped to behaviour.
    public var strategy: DataParallelStrategy.Type {
        switch self {
        case .allReduce: ReplicatedAllReduce.self
        case .exact: ExactTreeReduction.self
        case .sharded: ShardedAllReduce.self
        }
    }
}

public protocol DataParallelStrategy: AnyObject {
    /// Checks this strategy makes of the options before anything is allocated; errors are one
    /// line naming the flag and the fix. The options' own `validate` has run.
    static func validate(_ options: TrainingOptions, communication: CommunicationSettings, worldSize: Int) throws
    /// Why this strategy needs float32 matrix products (`--precision auto` then picks fp32), or nil.
    static var float32Reason: String? { get }
    /// True when the strategy's bits depend on BLAS's thread count, so each rank runs one.
    static var needsOneBLASThread: Bool { get }
    /// Differences between a checkpoint's options and a resumption's that change this
    /// strategy's numbers, beyond those every strategy shares (`TrainingOptions.sameTrajectory`).
    static func trajectoryDifferences(_ options: TrainingOptions, from saved: TrainingOptions) -> [String]

    /// How a rank's shard of the batch (`shard`) is cut into passes on up to `workers` threads
    /// (`passes` below; `RankMemory.of` counts the same workers and micro-batches).
    static func passPlan(_ options: TrainingOptions, shard: Range<Int>, workers: Int) -> PassPlan

    /// Makes every buffer the strategy needs (and registers its buckets: no collective here).
    /// `shard` is this rank's part of the global batch; `workers` the threads asked for.
    init(options: TrainingOptions, layout: ParameterLayout, comm: Communicator, shard: Range<Int>, workers: Int,
         communication: CommunicationSettings)

    /// The whole parameters, read by every forward and backward. [P]
    var parameters: FloatBuffer { get }
    /// This rank's AdamW: its step count, and the moments of the parameters it updates.
    var optimizer: AdamW { get }
    /// Collective: calls `body` on each rank of `writers` (the checkpoint's replica writers) with
    /// the float32 master weights and the moments of every parameter (params, m, v), in parameter
    /// layout, as checkpoints store them. Call after `waitForParameters()`.
    func withWholeState(at writers: [Int], _ body: (UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>) throws -> Void) rethrows
    /// A checksum of the parameters as every rank's forward reads them, the same on every rank
    /// unless a replica drifted. Call after `waitForParameters()`, between steps.
    func parameterChecksum() -> UInt64
    /// Collective: sets every rank's moments from the whole ones `root` passes (nil elsewhere).
    func loadWholeOptimizerState(m: UnsafeBufferPointer<Float>?, v: UnsafeBufferPointer<Float>?, root: Int)
    /// How the shard is cut into forward/backward passes on worker threads.
    var passes: PassPlan { get }
    /// The reduction as the run header names it, e.g. "allreduce, after backward".
    var summary: String { get }
    /// Sharded: the most bytes of parameter all-gathers in flight at once so far, and the bytes
    /// one step's gather puts on the wire (bench reports both; 0 when nothing is gathered).
    var gatherPeakBytesInFlight: Int { get }
    var gatherBytesPerStep: Int { get }

    /// Before a step's first pass.
    func beginStep()
    /// Collective, after set-up (which must make no collective) and before the header and the
    /// first step: what the strategy makes with every rank. Idempotent.
    func connect()
    /// From forward, before it first reads the parameters below `offset`: returns once they hold
    /// the last update (sharded: that bucket's all-gather has arrived). Called on worker threads;
    /// must not allocate.
    func parametersNeeded(upTo offset: Int)
    /// Returns once every parameter holds the last update: before anything but a step's forward
    /// reads or writes them (evaluation, checksums, checkpoints, samples, the end of a run).
    func waitForParameters()
    /// The buffer `worker`'s pass `pass` writes its gradient into, and whether it adds to it.
    func gradientBuffer(worker: Int, pass: Int) -> (buffer: FloatBuffer, accumulate: Bool)
    /// From backward, during `worker`'s last pass of the step: its gradients from `offset` on are
    /// final. Called on worker threads; must not allocate.
    func gradientsFinal(worker: Int, from offset: Int)
    /// After `worker`'s pass `pass` (its backward and losses) is done.
    func passFinished(worker: Int, pass: Int)
    /// After every pass: completes the gradient sum across workers and ranks (collective).
    /// Returns the seconds the network was busy with it.
    func reduce() -> Double
    /// The reduced gradient the update reads, final between `reduce()` and `finishStep`: whole
    /// and the same on every rank when replicated; when sharded, final on the rank's slices only.
    var reducedGradient: UnsafeMutableBufferPointer<Float> { get }
    /// The reduced gradient's squared global norm, the same bits on every rank (collective
    /// when each rank holds a slice).
    func squaredGradientNorm() -> Double
    /// AdamW from the reduced gradient times `gradScale`, at learning rate `lr`, split over
    /// `threads` (the rank's workers).
    func update(lr: Double, gradScale: Float, threads: WorkerPool)
}

extension DataParallelStrategy {
    /// Defaults: float32 and bf16 products alike, BLAS on any number of threads, and nothing
    /// but float32 summation order (as world sizes, sharding, micro-batches and worker threads
    /// change it) between a run and its resumption.
    public static var float32Reason: String? { nil }
    public static var needsOneBLASThread: Bool { false }
    public func connect() {}
    public var gatherPeakBytesInFlight: Int { 0 }
    public var gatherBytesPerStep: Int { 0 }
    public static func trajectoryDifferences(_ options: TrainingOptions, from saved: TrainingOptions) -> [String] { [] }
    public static func passPlan(_ options: TrainingOptions, shard: Range<Int>, workers: Int) -> PassPlan {
        PassPlan.accumulating(options, shard: shard, workers: workers)
    }

    /// Global norm, clip and AdamW: the one place every strategy's update is decided. No update
    /// when the loss or the norm is not finite (the run then stops); every rank decides alike.
    public func finishStep(lr: Double, lossIsFinite: Bool, threads: WorkerPool) -> StepUpdate {
        let norm = squaredGradientNorm().squareRoot()
        let applied = lossIsFinite && norm.isFinite
        if applied { update(lr: lr, gradScale: clipScale(norm: norm, maxNorm: optimizer.config.gradClip), threads: threads) }
        return StepUpdate(gradNorm: norm, applied: applied)
    }
}

/// A strategy whose every rank holds the whole parameters and AdamW state: what it delegates
/// to its ReplicatedOptimizer is written once, here.
public protocol ReplicatedStrategy: DataParallelStrategy {
    var replica: ReplicatedOptimizer { get }
    var comm: Communicator { get }
}

extension ReplicatedStrategy {
    public var parameters: FloatBuffer { replica.parameters }
    public var optimizer: AdamW { replica.optimizer }

    public func withWholeState(at writers: [Int], _ body: (UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>) throws -> Void) rethrows {
        try replica.withWholeState(at: writers, comm: comm, body)
    }

    public func parameterChecksum() -> UInt64 { contentChecksum(UnsafeBufferPointer(parameters.pointer)) }

    public func loadWholeOptimizerState(m: UnsafeBufferPointer<Float>?, v: UnsafeBufferPointer<Float>?, root: Int) {
        replica.loadWholeOptimizerState(comm: comm, m: m, v: v, root: root)
    }

    /// Every rank updates every parameter itself: nothing arrives later.
    public func parametersNeeded(upTo offset: Int) {}
    public func waitForParameters() {}

    /// The reduced gradient is whole and identical on every rank, so its norm is too.
    public func squaredGradientNorm() -> Double { sumOfSquares(UnsafeBufferPointer(reducedGradient)) }

    public func update(lr: Double, gradScale: Float, threads: WorkerPool) {
        replica.update(lr: lr, gradScale: gradScale, threads: threads)
    }
}

/// How a rank's shard of the batch runs: `workers` threads, each `passesPerWorker`
/// forward/backward passes of `microBatch` sequences, in contiguous blocks.
public struct PassPlan: Sendable {
    public let firstSequence: Int
    public let workers: Int
    public let microBatch: Int
    public let passesPerWorker: Int

    /// A rank's shard split among up to `requested` worker threads in whole micro-batches of
    /// `options.microBatch` (accumulated in passes), or without micro-batches one pass each.
    static func accumulating(_ options: TrainingOptions, shard: Range<Int>, workers requested: Int) -> PassPlan {
        let microBatches = options.microBatch.map { shard.count / $0 } ?? shard.count
        let workers = workerCount(requested: requested, sequences: microBatches)
        return PassPlan(firstSequence: shard.lowerBound, workers: workers, microBatch: options.microBatch ?? shard.count / workers,
                        passesPerWorker: options.microBatch == nil ? 1 : microBatches / workers)
    }

    /// The largest worker count ≤ requested that splits `sequences` evenly.
    static func workerCount(requested: Int, sequences: Int) -> Int {
        var n = max(1, min(requested, sequences))
        while sequences % n != 0 { n -= 1 }
        return n
    }

    /// Each rank's sequences must split into whole micro-batches.
    static func validateMicroBatches(_ options: TrainingOptions, worldSize: Int) throws {
        let perRank = options.batch / worldSize
        if let microBatch = options.microBatch, perRank % microBatch != 0 {
            throw ConfigError("each rank's \(perRank) sequences must split into micro-batches of \(microBatch); choose --micro-batch dividing \(perRank)")
        }
    }

    /// The batch positions `worker`'s pass `pass` trains on.
    public func sequences(worker: Int, pass: Int) -> Range<Int> {
        let first = firstSequence + (worker * passesPerWorker + pass) * microBatch
        return first..<(first + microBatch)
    }
}

/// What `finishStep` did: the reduced gradient's global norm, and whether AdamW ran.
public struct StepUpdate: Sendable {
    public let gradNorm: Double
    public let applied: Bool
}
