// OneHostSharding: the sharded reduction when every rank runs on one host, through memory the
// ranks share (Communicator.sharedFloats). HostSum: each rank's gradient sum is its segment of
// one window, so after backward a rank adds the other ranks' gradients of its own slices
// straight into its own. HostGather: each rank's parameters are its segment of another, so once
// every rank has updated its slices a rank copies the others' from their segments. No message,
// no receive buffer, no communication thread polling the transport on the cores backward and
// forward use: over MPI, those slowed one host's ranks against one process's threads
// (docs/multihost-bench.md, "One host: shared memory instead of the collectives").

import Foundation
import GomlComm
import GomlCore

/// The reduce-scatter.
final class HostSum: BucketReducer {
    private let shared: SharedFloats
    /// Where each rank's gradients start, in rank order.
    private let segments: [UnsafeMutablePointer<Float>]
    private let rank: Int
    /// This rank's slice of every bucket.
    private let slices: [Range<Int>]
    /// A rank past the first two sums its slice here, a piece at a time (its own values are
    /// needed in their place in the order).
    private let scratch: UnsafeMutableBufferPointer<Float>

    init(_ shared: SharedFloats, rank: Int, slices: [Range<Int>]) {
        self.shared = shared
        segments = shared.segments.map { $0.baseAddress! }
        self.rank = rank
        self.slices = slices
        scratch = .allocate(capacity: rank > 1 ? 16_384 : 0)
    }

    deinit { scratch.deallocate() }

    /// Nothing travels while backward runs: the sum waits for every rank's whole gradient.
    func start(_ bucket: Int) {}

    /// Waits until every rank's gradients are final, then sums this rank's slices; returns the
    /// seconds the sum took.
    func waitAll() -> Double {
        shared.synchronize("MPI_Barrier (every rank's gradients final, before the shared-memory sum)")
        let start = DispatchTime.now().uptimeNanoseconds
        for slice in slices where !slice.isEmpty { sum(slice) }
        return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    }

    /// In rank order, as the communicators add: ((g0 + g1) + g2) + …; either order of the first
    /// two gives the same bits, so ranks 0 and 1 add into their own values in place.
    private func sum(_ slice: Range<Int>) {
        let own = segments[rank] + slice.lowerBound
        if rank <= 1 {
            addInPlace(own, segments[1 - rank] + slice.lowerBound, count: slice.count)
            for source in 2..<segments.count { addInPlace(own, segments[source] + slice.lowerBound, count: slice.count) }
            return
        }
        var done = slice.lowerBound
        while done < slice.upperBound {
            let n = min(scratch.count, slice.upperBound - done)
            scratch.baseAddress!.update(from: segments[0] + done, count: n)
            for source in 1..<segments.count { addInPlace(scratch.baseAddress!, segments[source] + done, count: n) }
            (segments[rank] + done).update(from: scratch.baseAddress!, count: n)
            done += n
        }
    }
}

/// The all-gather.
final class HostGather {
    private let shared: SharedFloats
    private let segments: [UnsafeMutablePointer<Float>]
    private let rank: Int
    private let shards: ShardLayout

    init(_ shared: SharedFloats, rank: Int, shards: ShardLayout) {
        self.shared = shared
        segments = shared.segments.map { $0.baseAddress! }
        self.rank = rank
        self.shards = shards
    }

    /// Once per update, every rank: copies the other ranks' slices of every bucket into this
    /// rank's parameters, between two barriers. The first waits for every rank's update; the
    /// second keeps every rank from writing its parameters again (DiLoCo's outer step, its
    /// evaluation of θ_global) while another still reads them.
    func copy() {
        shared.synchronize("MPI_Barrier (every rank's slices updated, before the parameters are copied)")
        for bucket in shards.buckets.indices {
            for owner in segments.indices where owner != rank {
                let slice = shards.slice(bucket, rank: owner)
                (segments[rank] + slice.lowerBound).update(from: segments[owner] + slice.lowerBound, count: slice.count)
            }
        }
        shared.synchronize("MPI_Barrier (every rank's parameters copied)")
    }
}
