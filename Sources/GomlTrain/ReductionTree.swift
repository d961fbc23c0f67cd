// ReductionTree: the fixed binary tree ExactTreeReduction sums micro-shard gradients along, so
// the sum has the same bits at any world size: this rank's subtree leaf by leaf, then across
// ranks by recursive halving and doubling. Sums only; what a leaf is belongs to the caller.

import GomlComm
import GomlCore

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
    /// Per leaf of this rank's subtree: the depth of the partial it overwrites, and the depths d
    /// whose `partials[d] += partials[d + 1]` follow it (the subtrees it completes, innermost first).
    private let leafDepths: [Int]
    private let sumsAfterLeaf: [[Int]]

    /// `leaves` in the whole tree, of which this rank sums `local` (one node of the tree).
    public init(result: FloatBuffer, leaves: Int, local: Range<Int>) {
        var depth = 0
        while (1 << depth) < leaves { depth += 1 }
        partials = [result] + (0..<(depth + 1)).map { _ in FloatBuffer(count: result.count) }
        incoming = FloatBuffer(count: result.count)
        // The recursion sum(lo..<hi) = sum(lo..<mid) + sum(mid..<hi), walked once and recorded,
        // so that the caller can compute leaves in order, one at a time.
        var depths: [Int] = [], sums: [[Int]] = []
        func walk(_ lo: Int, _ hi: Int, depth: Int) {
            if hi - lo == 1 {
                depths.append(depth)
                sums.append([])
                return
            }
            let mid = lo + (hi - lo) / 2
            walk(lo, mid, depth: depth)
            walk(mid, hi, depth: depth + 1)
            sums[sums.count - 1].append(depth)
        }
        walk(local.lowerBound, local.upperBound, depth: 0)
        leafDepths = depths
        sumsAfterLeaf = sums
    }

    /// The buffer leaf `k` of this rank's subtree (counted from its first) must overwrite with its gradient.
    public func leafBuffer(_ k: Int) -> FloatBuffer { partials[leafDepths[k]] }

    /// After leaf `k` is written: adds up the subtrees it completes. Leaves come in order.
    public func leafWritten(_ k: Int) {
        for depth in sumsAfterLeaf[k] { partials[depth].add(partials[depth + 1].base) }
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
