// GradientBuckets: a rank's per-worker gradients, summed over workers in one fixed order, and
// the reduction of that sum over ranks in buckets (an all-reduce, or a sharded reduce-scatter),
// each started once it is final on every worker. During backward (overlap)
// Transformer.gradientsFinal reports "final from offset x on"; after backward everything is
// final at once. This file decides buckets and sums workers; a Reducer starts, progresses and
// waits for them. Used by ReplicatedAllReduce and ShardedAllReduce.

import Foundation
import GomlComm
import GomlCore

/// Buckets of whole contiguous tensors, in the order backward finishes them: from the end of
/// the layout (output layer, last blocks) towards the embedding. Each holds at least
/// `bucketBytes` except possibly the last.
public func gradientBuckets(_ layout: ParameterLayout, bucketBytes: Int) -> [Range<Int>] {
    var buckets: [Range<Int>] = []
    var end = layout.count, start = layout.count
    for tensor in layout.tensors.reversed() {
        start = tensor.offset
        if (end - start) * MemoryLayout<Float>.stride >= bucketBytes {
            buckets.append(start..<end)
            end = start
        }
    }
    if start < end { buckets.append(start..<end) }
    return buckets
}

/// One gradient buffer per worker thread of a rank [P each]; worker 0's receives their sum.
final class WorkerGradients {
    private(set) var buffers: [FloatBuffer]
    var sum: FloatBuffer { buffers[0] }

    init(workers: Int, count: Int) {
        buffers = (0..<workers).map { _ in FloatBuffer(count: count) }
    }

    /// Puts the sum (worker 0's buffer) in `memory` instead, between steps.
    func placeSum(in memory: UnsafeMutableBufferPointer<Float>, ownedBy owner: AnyObject) {
        precondition(memory.count == sum.count)
        buffers[0] = FloatBuffer(in: memory, ownedBy: owner)
    }

    /// Adds workers 1… into worker 0's buffer over `range`, in worker order: ((g0 + g1) + g2)…
    /// Every path sums workers here, so bucketed and whole-buffer sums have the same bits.
    func addWorkers(_ range: Range<Int>) {
        for extra in buffers.dropFirst() {
            addInPlace(sum.base + range.lowerBound, extra.base + range.lowerBound, count: range.count)
        }
    }
}

/// What a BucketedReduction hands its buckets to: a Reducer over the communicator, or a
/// HostSum over shared memory.
protocol BucketReducer: AnyObject {
    /// Starts `bucket`'s reduction and returns at once.
    func start(_ bucket: Int)
    /// Waits for every started bucket; returns the seconds the reduction was busy.
    func waitAll() -> Double
}

extension Reducer: BucketReducer {}

final class BucketedReduction {
    let buckets: [Range<Int>]
    private let gradients: WorkerGradients
    private let lock = NSLock()
    /// Per worker: the offset from which its gradients are final (count: none yet).
    private let frontiers: UnsafeMutableBufferPointer<Int>
    private var nextBucket = 0
    /// Reduces the started buckets of the workers' sum.
    private let reducer: BucketReducer

    init(buckets: [Range<Int>], gradients: WorkerGradients, reducer: BucketReducer) {
        self.buckets = buckets
        self.gradients = gradients
        self.reducer = reducer
        frontiers = .allocate(capacity: gradients.buffers.count)
        frontiers.initialize(repeating: gradients.sum.count)
    }

    /// An all-reduce of `buckets` of the workers' sum. Collective.
    static func allReduce(buckets: [Range<Int>], gradients: WorkerGradients, comm: Communicator, communication: CommunicationSettings) -> BucketedReduction {
        let sum = gradients.sum
        let reducer = Reducer.allReduce(comm, buckets: buckets.map { UnsafeMutableBufferPointer(rebasing: sum.pointer[$0]) }, compression: communication.compression,
                                        hierarchical: communication.hierarchical, pacing: communication.pacing, what: "MPI_Iallreduce (overlapped gradient buckets)")
        return BucketedReduction(buckets: buckets, gradients: gradients, reducer: reducer)
    }

    deinit { frontiers.deallocate() }

    func beginStep() {
        frontiers.update(repeating: gradients.sum.count)
        nextBucket = 0
    }

    /// `worker`'s gradients from `offset` on are final. Sums over workers and starts every
    /// bucket now final on all of them, in bucket order (the same on every rank).
    func workerReached(_ worker: Int, offset: Int) {
        lock.lock()
        defer { lock.unlock() }
        frontiers[worker] = offset
        var final = offset
        for f in frontiers where f > final { final = f }
        while nextBucket < buckets.count && buckets[nextBucket].lowerBound >= final {
            gradients.addWorkers(buckets[nextBucket])
            reducer.start(nextBucket)
            nextBucket += 1
        }
    }

    /// After backward: every worker's gradients are final; starts the buckets not yet started.
    func allWorkersFinal() {
        for worker in frontiers.indices { workerReached(worker, offset: 0) }
    }

    /// Waits for the buckets still in flight; returns the seconds the network was busy.
    func finishStep() -> Double {
        precondition(nextBucket == buckets.count, "backward ended with \(buckets.count - nextBucket) gradient bucket(s) never final")
        return reducer.waitAll()
    }
}
