// ReplicatedAllReduce: the default strategy. Every rank holds the whole model, gradient and
// AdamW state; worker threads split the rank's shard (accumulating over micro-batches when
// asked), their gradients are summed on the rank, then over ranks by all-reduce: bucket by
// bucket during backward (overlap) or after it, float32 or bf16 on the wire, flat or within
// each host first. Fast; ranks agree bit for bit, world sizes to float32 rounding.

import Foundation
import GomlComm
import GomlCore

/// How the gradient all-reduce runs; none of it changes the model's maths beyond float32
/// summation order, except bf16 compression.
public struct CommunicationSettings: Sendable {
    /// Start each bucket's all-reduce while backward computes earlier layers.
    public var overlap = true
    /// Bucket size; measured on the two-host cluster (docs/multihost-bench.md).
    public var bucketBytes = 1_000_000
    public var compression = GradientCompression.none
    /// Several ranks per host on several hosts: reduce inside each host first, so one copy
    /// per host crosses the network. Off by default: slower on the test cluster despite half
    /// the bytes (docs/multihost-bench.md).
    public var hierarchical = false
    /// Sharded at bf16 precision (synchronous): the matrices, rounded to bf16 as the products
    /// read them, are all-gathered as bf16 (a rank's own slices stay float32).
    public var bf16Weights = true
    public init() {}
}

public final class ReplicatedAllReduce: DataParallelStrategy {
    /// When the rank's summed gradient crosses ranks.
    private enum Schedule {
        /// Bucket by bucket, each started as backward makes it final on every worker.
        case duringBackward(BucketedReduction)
        /// After backward, the whole gradient as one registered bucket (the communicator compresses it).
        case afterBackward(BucketedReduction)
        /// After backward, one blocking float32 sum.
        case afterBackwardBlocking
    }

    public let passes: PassPlan
    private let replica: ReplicatedOptimizer
    private let gradients: WorkerGradients
    private let schedule: Schedule
    private let comm: Communicator
    private let settings: CommunicationSettings

    public static func validate(_ options: TrainingOptions, communication: CommunicationSettings, worldSize: Int) throws {
        let perRank = options.batch / worldSize
        if let microBatch = options.microBatch, perRank % microBatch != 0 {
            throw ConfigError("each rank's \(perRank) sequences must split into micro-batches of \(microBatch); choose --micro-batch dividing \(perRank)")
        }
    }

    public static var float32Reason: String? { nil }
    public static var needsOneBLASThread: Bool { false }
    /// Micro-batches and worker threads change only float32 summation order, as world sizes do.
    public static func trajectoryDifferences(_ options: TrainingOptions, from saved: TrainingOptions) -> [String] { [] }

    public init(options: TrainingOptions, layout: ParameterLayout, comm: Communicator, shard: Range<Int>, workers requested: Int,
                communication: CommunicationSettings) {
        passes = Self.passPlan(options, shard: shard, workers: requested)
        let workers = passes.workers
        let gradients = WorkerGradients(workers: workers, count: layout.count)
        self.gradients = gradients
        replica = ReplicatedOptimizer(layout: layout, config: options.optimizer, gradient: gradients.sum)
        func buckets(_ ranges: [Range<Int>]) -> BucketedReduction {
            .allReduce(buckets: ranges, gradients: gradients, comm: comm, compression: communication.compression,
                       hierarchical: communication.hierarchical)
        }
        schedule = communication.overlap ? .duringBackward(buckets(gradientBuckets(layout, bucketBytes: communication.bucketBytes)))
            : communication.compression != .none ? .afterBackward(buckets([0..<layout.count]))
            : .afterBackwardBlocking
        self.comm = comm
        settings = communication
    }

    /// Workers split whole micro-batches; without --micro-batch each worker's share is one.
    static func passPlan(_ options: TrainingOptions, shard: Range<Int>, workers requested: Int) -> PassPlan {
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

    public var parameters: FloatBuffer { replica.parameters }
    public var optimizer: AdamW { replica.optimizer }
    public var memory: RankMemory { replica.memory(workers: gradients.buffers.count) }

    public func withWholeState(at writers: [Int], _ body: (UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>) throws -> Void) rethrows {
        try replica.withWholeState(at: writers, comm: comm, body)
    }

    public func parameterChecksum() -> UInt64 { contentChecksum(UnsafeBufferPointer(parameters.pointer)) }

    public func loadWholeOptimizerState(m: UnsafeBufferPointer<Float>?, v: UnsafeBufferPointer<Float>?, root: Int) {
        replica.loadWholeOptimizerState(comm: comm, m: m, v: v, root: root)
    }

    public var summary: String {
        let overlap = settings.overlap ? String(format: ", overlapped with backward in %.1f MB buckets", Double(settings.bucketBytes) / 1e6) : ", after backward"
        let hierarchy = settings.hierarchical && comm.localSize > 1 && comm.localSize < comm.size ? ", within each host first" : ""
        return ReductionMode.allReduce.rawValue + overlap + hierarchy + (settings.compression == .none ? "" : ", \(settings.compression.rawValue) on the wire")
            + (comm.size > 1 ? ", replicated: every rank holds the whole optimizer state" : "")
    }

    /// Every rank updates every parameter itself: nothing arrives later.
    public func parametersNeeded(upTo offset: Int) {}
    public func waitForParameters() {}

    public func beginStep() {
        switch schedule {
        case .duringBackward(let buckets), .afterBackward(let buckets): buckets.beginStep()
        case .afterBackwardBlocking: break
        }
    }

    /// A worker's first pass overwrites its buffer, later micro-batches add to it.
    public func gradientBuffer(worker: Int, pass: Int) -> (buffer: FloatBuffer, accumulate: Bool) {
        (gradients.buffers[worker], pass > 0)
    }

    public func gradientsFinal(worker: Int, from offset: Int) {
        if case .duringBackward(let buckets) = schedule { buckets.workerReached(worker, offset: offset) }
    }

    public func passFinished(worker: Int, pass: Int) {}

    public func reduce() -> Double {
        let start = DispatchTime.now().uptimeNanoseconds
        switch schedule {
        case .duringBackward(let buckets):
            return buckets.finishStep()
        case .afterBackward(let buckets):
            buckets.allWorkersFinal()
            _ = buckets.finishStep()
        case .afterBackwardBlocking:
            gradients.addWorkers(0..<gradients.sum.count)
            comm.allReduceSum(gradients.sum.pointer)
        }
        return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    }

    public var reducedGradient: UnsafeMutableBufferPointer<Float> { gradients.sum.pointer }

    public func finishStep(lr: Double, lossIsFinite: Bool, threads: WorkerPool) -> StepUpdate {
        replica.step(gradient: reducedGradient, lr: lr, lossIsFinite: lossIsFinite, threads: threads)
    }
}
