// GradientReduction: how each rank's gradients become the global batch's gradient.
// .allReduce: one in-place MPI sum of the flat buffer (fast; summation order depends on ranks).
// .exact: a fixed binary tree over micro-shards, so the sum has the same bits at any world size.

import GomlComm
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
    /// The slice each halving level started from, for the doubling phase (64 levels: any world size).
    private var spans = [(Int, Int)](repeating: (0, 0), count: 64)

    public init(result: FloatBuffer, leaves: Int) {
        var depth = 0
        while (1 << depth) < leaves { depth += 1 }
        partials = [result] + (0..<(depth + 1)).map { _ in FloatBuffer(count: result.count) }
        incoming = FloatBuffer(count: result.count)
    }

    /// Sums leaves lo..<hi into partials[0]. `leaf(i, buffer)` must overwrite the buffer with
    /// leaf i's gradient.
    public func reduceLocal(_ range: Range<Int>, leaf: (Int, FloatBuffer) -> Void) {
        reduce(range.lowerBound, range.upperBound, depth: 0, leaf: leaf)
    }

    private func reduce(_ lo: Int, _ hi: Int, depth: Int, leaf: (Int, FloatBuffer) -> Void) {
        let out = partials[depth]
        if hi - lo == 1 {
            leaf(lo, out)
            return
        }
        let mid = lo + (hi - lo) / 2
        reduce(lo, mid, depth: depth, leaf: leaf)
        reduce(mid, hi, depth: depth + 1, leaf: leaf)
        out.add(partials[depth + 1].base)
    }

    /// Combines the ranks' subtree sums along the tree: ranks r and r + 2^s are siblings at
    /// level s. Done as recursive halving then doubling (each rank reduces a shrinking slice,
    /// then slices are exchanged back), so the traffic equals an all-reduce's; every element
    /// is still summed left + right in tree order, so every rank ends with the same bits.
    public func reduceAcrossRanks(_ comm: Communicator) {
        let result = partials[0].pointer
        var lo = 0, hi = result.count, level = 0
        var distance = 1
        while distance < comm.size {
            let partner = comm.rank ^ distance, mid = lo + (hi - lo) / 2
            let (keep, give) = comm.rank & distance == 0 ? (lo..<mid, mid..<hi) : (mid..<hi, lo..<mid)
            comm.exchange(UnsafeBufferPointer(rebasing: result[give]), UnsafeMutableBufferPointer(rebasing: incoming.pointer[keep]),
                          with: partner)
            addInPlace(result.baseAddress! + keep.lowerBound, incoming.base + keep.lowerBound, count: keep.count)
            spans[level] = (lo, hi)
            (lo, hi) = (keep.lowerBound, keep.upperBound)
            level += 1
            distance *= 2
        }
        while level > 0 {
            level -= 1
            distance /= 2
            let (outerLo, outerHi) = spans[level]
            let missing = lo == outerLo ? hi..<outerHi : outerLo..<lo
            comm.exchange(UnsafeBufferPointer(rebasing: result[lo..<hi]), UnsafeMutableBufferPointer(rebasing: result[missing]),
                          with: comm.rank ^ distance)
            (lo, hi) = (outerLo, outerHi)
        }
    }
}
