// OverlappedReduction: the all-reduce of the flat gradient in buckets, each started as soon as
// backward has made it final on every worker of this rank, so the network works while backward
// computes the earlier layers. Backward only reports "gradients from offset x on are final"
// (Transformer.gradientsFinal); this file decides buckets and sums them across workers, and
// the communicator owns starting, progress and waiting (see MPICommunicator's ProgressThread).

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

final class OverlappedReduction {
    let buckets: [Range<Int>]
    private let result: FloatBuffer          // worker 0's gradient: the rank's sum ends here
    private let extras: [FloatBuffer]        // workers 1…: added into `result` bucket by bucket
    private let comm: Communicator
    private let lock = NSLock()
    /// Per worker: the offset from which its gradients are final (count: none yet).
    private let frontiers: UnsafeMutableBufferPointer<Int>
    private var nextBucket = 0

    init(layout: ParameterLayout, bucketBytes: Int, workerGrads: [FloatBuffer], comm: Communicator,
         compression: GradientCompression, hierarchical: Bool) {
        buckets = gradientBuckets(layout, bucketBytes: bucketBytes)
        result = workerGrads[0]
        extras = Array(workerGrads.dropFirst())
        self.comm = comm
        frontiers = .allocate(capacity: workerGrads.count)
        frontiers.initialize(repeating: layout.count)
        let result = self.result
        comm.prepareNonBlockingSums(buckets.map { UnsafeMutableBufferPointer(rebasing: result.pointer[$0]) }, compression: compression,
                                    hierarchical: hierarchical)
    }

    deinit { frontiers.deallocate() }

    func beginStep() {
        frontiers.update(repeating: result.count)
        nextBucket = 0
    }

    /// From backward's last pass on `worker`: its gradients from `offset` on are final. Starts
    /// every bucket now final on all workers, in bucket order (the same on every rank).
    func workerReached(_ worker: Int, offset: Int) {
        lock.lock()
        defer { lock.unlock() }
        frontiers[worker] = offset
        var final = offset
        for f in frontiers where f > final { final = f }
        while nextBucket < buckets.count && buckets[nextBucket].lowerBound >= final {
            let bucket = buckets[nextBucket]
            // Workers summed in the same order as the whole-buffer path: ((g0 + g1) + g2)…
            for extra in extras {
                addInPlace(result.base + bucket.lowerBound, extra.base + bucket.lowerBound, count: bucket.count)
            }
            comm.startAllReduceSum(bucket: nextBucket)
            nextBucket += 1
        }
    }

    /// Waits for the buckets still in flight; returns the seconds the network was busy.
    func finishStep() -> Double {
        precondition(nextBucket == buckets.count, "backward ended with \(buckets.count - nextBucket) gradient bucket(s) never final")
        return comm.waitForAllReduces()
    }
}
