// CollectiveBench: times the gradient collectives of a model on the real communicator, apart
// from any compute, to see how much of a link's rate they reach (`goml-dist bench
// --collectives`). The buffer is the model's flat gradient, cut into the buckets training uses,
// and each collective runs exactly as the strategies run it: one blocking all-reduce of the
// whole buffer, the bucketed non-blocking all-reduce, and the sharded reduce-scatter and
// all-gather. Timing only: the values summed are meaningless.

import Foundation
import GomlComm
import GomlCore

/// One collective's timing: the bytes it must move and how fast it moved them.
public struct CollectiveMeasurement {
    /// allreduce_blocking, allreduce_buckets, reduce_scatter, all_gather, reduce_scatter_all_gather.
    public let collective: String
    /// The float32 buffer it covers (the flat gradient or parameters).
    public let bufferBytes: Int
    /// Each bucket's float32 bytes, in the order started (one entry when unbucketed).
    public let bucketBytes: [Int]
    /// What crosses the wire per copy of the buffer: float32, or bfloat16 with compression.
    public let wireBytes: Int
    /// The fewest bytes each rank must send: 2(N−1)/N · wire for an all-reduce, (N−1)/N · wire
    /// for a reduce-scatter or an all-gather (the bandwidth lower bound of ring algorithms).
    public let boundBytesPerRank: Double
    public let bound: String
    /// Per repetition, the slowest rank's seconds (each rank starts after a barrier).
    public let seconds: [Double]

    public var medianSeconds: Double { median(seconds) }

    /// Gbit/s each rank sends at the lower bound: bound bytes × 8 / median time.
    public var achievedGbitPerSecond: Double { boundBytesPerRank * 8 / medianSeconds / 1e9 }
}

public enum CollectiveBench {
    /// Times each collective `repeats` times after `warmup` untimed runs, on every rank (all
    /// ranks must call this with the same arguments). Registers buckets with `comm`, which
    /// allows that once, so a process measures one setting.
    public static func run(comm: Communicator, layout: ParameterLayout, communication: CommunicationSettings,
                           warmup: Int, repeats: Int) -> [CollectiveMeasurement] {
        let buckets = gradientBuckets(layout, bucketBytes: communication.bucketBytes)
        let shards = ShardLayout(buckets: buckets, ranks: comm.size)
        let gradient = FloatBuffer(count: layout.count), parameters = FloatBuffer(count: layout.count)
        // Small finite values, so bfloat16 rounding sees ordinary numbers and repeated sums stay finite.
        for i in 0..<layout.count { gradient.pointer[i] = 1e-6; parameters.pointer[i] = 1e-3 }
        let whole = UnsafeMutableBufferPointer(rebasing: gradient.pointer[0..<layout.count])
        let sums = Reducer.allReduce(comm, buckets: buckets.map { UnsafeMutableBufferPointer(rebasing: gradient.pointer[$0]) },
                                     compression: communication.compression, hierarchical: communication.hierarchical, pacing: communication.pacing,
                                     what: "MPI_Iallreduce (benchmarked gradient buckets)")
        let sharded = Reducer.sharded(comm, buckets: buckets.indices.map { b in
            ShardedBucket(gradient: UnsafeMutableBufferPointer(rebasing: gradient.pointer[buckets[b]]),
                          parameters: UnsafeMutableBufferPointer(rebasing: parameters.pointer[buckets[b]]), counts: shards.counts(b))
        }, compression: communication.compression, pacing: communication.pacing)

        let n = comm.size, float = MemoryLayout<Float>.stride
        let bufferBytes = CollectiveBytes.gatheredWire(parameters: layout.count), perBucket = buckets.map { $0.count * float }
        let summedWire = CollectiveBytes.summedWire(parameters: layout.count, compression: communication.compression)
        let allReduce = { CollectiveBytes.allReduceBound(wire: $0, ranks: n) }, half = { CollectiveBytes.scatterOrGatherBound(wire: $0, ranks: n) }
        let reduceScatter = { for b in buckets.indices { sharded.reduceScatter.start(b) }; _ = sharded.reduceScatter.waitAll() }
        let allGather = { for b in buckets.indices { sharded.allGather.start(b) }; for b in buckets.indices { sharded.allGather.wait(for: b) } }
        var cases: [(name: String, buckets: [Int], wire: Int, bound: (Int) -> Double, boundText: String, body: () -> Void)] = []
        // The blocking all-reduce sends float32 only.
        if communication.compression == .none {
            cases.append(("allreduce_blocking", [bufferBytes], bufferBytes, allReduce, "2(N-1)/N x wire bytes", { comm.allReduceSum(whole) }))
        }
        cases.append(("allreduce_buckets", perBucket, summedWire, allReduce, "2(N-1)/N x wire bytes", {
            for b in buckets.indices { sums.start(b) }
            _ = sums.waitAll()
        }))
        cases.append(("reduce_scatter", perBucket, summedWire, half, "(N-1)/N x wire bytes", reduceScatter))
        cases.append(("all_gather", perBucket, bufferBytes, half, "(N-1)/N x wire bytes (float32)", allGather))
        cases.append(("reduce_scatter_all_gather", perBucket, summedWire + bufferBytes, half,
                      "(N-1)/N x (summed wire + float32 gathered) bytes", { reduceScatter(); allGather() }))

        return cases.map { c in
            var seconds: [Double] = []
            let mine = UnsafeMutableBufferPointer<Double>.allocate(capacity: 1), all = UnsafeMutableBufferPointer<Double>.allocate(capacity: comm.size)
            defer { mine.deallocate(); all.deallocate() }
            for i in 0..<(warmup + repeats) {
                _ = comm.allAgree(true)   // a barrier: every rank starts together
                let start = DispatchTime.now().uptimeNanoseconds
                c.body()
                mine[0] = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                comm.allGather(UnsafeBufferPointer(mine), into: all)
                if i >= warmup { seconds.append(all.max()!) }
            }
            return CollectiveMeasurement(collective: c.name, bufferBytes: bufferBytes, bucketBytes: c.buckets, wireBytes: c.wire,
                                         boundBytesPerRank: c.bound(c.wire), bound: c.boundText, seconds: seconds)
        }
    }
}

/// The bytes `bench --collectives` counts, and `goml-dist plan` with it: what crosses the wire
/// per copy of the buffer, and the fewest bytes each of N ranks must send (the bandwidth
/// lower bound of ring algorithms).
public enum CollectiveBytes {
    /// The summed gradient: float32, or bfloat16 with compression.
    public static func summedWire(parameters: Int, compression: GradientCompression) -> Int {
        parameters * (compression == .bf16 ? 2 : MemoryLayout<Float>.stride)
    }

    /// The gathered parameters, counted as float32.
    public static func gatheredWire(parameters: Int) -> Int { parameters * MemoryLayout<Float>.stride }

    /// An all-reduce: 2(N−1)/N × wire.
    public static func allReduceBound(wire: Int, ranks: Int) -> Double { 2 * Double(ranks - 1) / Double(ranks) * Double(wire) }

    /// A reduce-scatter or an all-gather: (N−1)/N × wire.
    public static func scatterOrGatherBound(wire: Int, ranks: Int) -> Double { Double(ranks - 1) / Double(ranks) * Double(wire) }
}
