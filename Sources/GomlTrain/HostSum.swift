// HostSum: the sharded reduce-scatter when every rank runs on one host. Each rank's gradient
// sum lives in its segment of one shared-memory window (Communicator.sharedFloats), so after
// backward a rank adds the other ranks' gradients of its own slices straight into its own: no
// message, no copy into a receive buffer, no communication thread polling the transport while
// backward computes. Over MPI the same sum costs a copy of every slice and that thread's polls,
// on the cores backward uses (docs/multihost-bench.md, "One host: the sum in shared memory").

import Foundation
import GomlComm
import GomlCore

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
