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
    /// Sharded at bf16 precision: the matrices, rounded to bf16 as the products read them, are
    /// all-gathered as bf16 (a rank's own slices stay float32). Off when something reads every
    /// parameter as float32 (DiLoCo's Δ).
    public var bf16Weights = true
    /// Fault injection for tests (hidden --fault-lost-gather-rank): sharded, this rank starts no
    /// all-gather and stops responding in the next forward, as a rank lost during it would (on
    /// one host, it stops before the parameter copy).
    public var faultLostDuringGather = false
    /// Sharded with every rank on one host: sum the gradients and copy the parameters through
    /// shared memory (HostSum, HostGather) instead of MPI's reduce-scatter and all-gather. Off
    /// for measurements and the MPI path's tests.
    public var sharedMemory = true
    /// How the reducers' threads poll and how many bytes of all-gather fly at once.
    public var pacing = ReducerPacing()
    public init() {}
}

public final class ReplicatedAllReduce: ReplicatedStrategy {
    /// When the rank's summed gradient crosses ranks.
    private enum Schedule {
        /// Bucket by bucket, each started as backward makes it final on every worker.
        case duringBackward(BucketedReduction)
        /// After backward, the whole gradient as one bucket (its reducer compresses it).
        case afterBackward(BucketedReduction)
        /// After backward, one blocking float32 sum.
        case afterBackwardBlocking
    }

    public let passes: PassPlan
    public let replica: ReplicatedOptimizer
    private let gradients: WorkerGradients
    private let schedule: Schedule
    public let comm: Communicator
    private let settings: CommunicationSettings

    public static func validate(_ options: TrainingOptions, communication: CommunicationSettings, worldSize: Int) throws {
        try PassPlan.validateMicroBatches(options, worldSize: worldSize)
    }

    public init(options: TrainingOptions, layout: ParameterLayout, comm: Communicator, shard: Range<Int>, workers requested: Int,
                communication: CommunicationSettings) {
        passes = Self.passPlan(options, shard: shard, workers: requested)
        let workers = passes.workers
        let gradients = WorkerGradients(workers: workers, count: layout.count)
        self.gradients = gradients
        replica = ReplicatedOptimizer(layout: layout, config: options.optimizer, gradient: gradients.sum)
        func buckets(_ ranges: [Range<Int>]) -> BucketedReduction {
            .allReduce(buckets: ranges, gradients: gradients, comm: comm, communication: communication)
        }
        schedule = communication.overlap ? .duringBackward(buckets(gradientBuckets(layout, bucketBytes: communication.bucketBytes)))
            : communication.compression != .none ? .afterBackward(buckets([0..<layout.count]))
            : .afterBackwardBlocking
        self.comm = comm
        settings = communication
    }

    public var summary: String {
        let overlap = settings.overlap ? String(format: ", overlapped with backward in %.1f MB buckets", Double(settings.bucketBytes) / 1e6) : ", after backward"
        let hierarchy = settings.hierarchical && comm.localSize > 1 && comm.localSize < comm.size ? ", within each host first" : ""
        return ReductionMode.allReduce.rawValue + overlap + hierarchy + (settings.compression == .none ? "" : ", \(settings.compression.rawValue) on the wire")
            + (comm.size > 1 ? ", replicated: every rank holds the whole optimizer state" : "")
    }

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
}
