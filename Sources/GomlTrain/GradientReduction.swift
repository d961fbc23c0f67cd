// GradientReduction: how each rank's gradients become the global batch's gradient.
// .allReduce: one in-place MPI sum of the flat buffer (fast; summation order depends on ranks).
// .exact: a fixed binary tree over micro-shards, so the sum has the same bits at any world size.

import GomlCore

public enum ReductionMode: String, Codable, Sendable, CaseIterable {
    case allReduce = "allreduce", exact
}

/// The fixed pairwise tree over micro-shards 0..<n: sum(lo..<hi) = sum(lo..<mid) + sum(mid..<hi),
/// mid = lo + (hi − lo)/2. With W a power of two dividing n, rank r's contiguous micro-shards are
/// one node of this tree, so ranks reduce their subtree locally and then combine across ranks
/// along the same tree.
public final class TreeReducer {
    /// partials[0] is the result; deeper levels hold right subtrees while they are built.
    private let partials: [FloatBuffer]
    private let incoming: FloatBuffer

    public init(result: FloatBuffer, leaves: Int) {
        var depth = 0
        while (1 << depth) < leaves { depth += 1 }
        partials = [result] + (0..<(depth + 1)).map { _ in FloatBuffer(count: result.count) }
        incoming = FloatBuffer(count: result.count)
    }

    /// Sums leaves lo..<hi into partials[0]. `leaf(i, buffer)` must write leaf i's gradient
    /// into the zeroed buffer.
    public func reduceLocal(_ range: Range<Int>, leaf: (Int, FloatBuffer) -> Void) {
        reduce(range.lowerBound, range.upperBound, depth: 0, leaf: leaf)
    }

    private func reduce(_ lo: Int, _ hi: Int, depth: Int, leaf: (Int, FloatBuffer) -> Void) {
        let out = partials[depth]
        if hi - lo == 1 {
            out.zero()
            leaf(lo, out)
            return
        }
        let mid = lo + (hi - lo) / 2
        reduce(lo, mid, depth: depth, leaf: leaf)
        reduce(mid, hi, depth: depth + 1, leaf: leaf)
        out.add(partials[depth + 1].base)
    }

    /// Combines the ranks' subtree sums along the tree (rank r + s joins rank r at level s),
    /// then broadcasts rank 0's total so every rank holds the same bits.
    public func reduceAcrossRanks(_ comm: Communicator) {
        let result = partials[0]
        var stride = 1
        while stride < comm.size {
            if comm.rank % (2 * stride) == 0 {
                comm.receive(incoming.pointer, from: comm.rank + stride)
                result.add(incoming.base)
            } else {
                comm.send(UnsafeBufferPointer(result.pointer), to: comm.rank - stride)
                break
            }
            stride *= 2
        }
        comm.broadcast(UnsafeMutableRawBufferPointer(result.pointer), root: 0)
    }
}
