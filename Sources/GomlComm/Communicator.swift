// Communicator: the seam between training and the distributed engine. The trainer sees only
// this protocol; GomlMPI implements it over OpenMPI, SingleProcessCommunicator without MPI.
// It imports nothing but Foundation, so the MPI side depends on neither the maths nor the trainer.

import Foundation

public protocol Communicator: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// Rank and rank count on this node (for dividing cores between ranks).
    var localRank: Int { get }
    var localSize: Int { get }
    var hostName: String { get }

    /// Element-wise sum over ranks, in place; every rank ends with the same values.
    func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>)
    func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>)
    /// Every rank's `send` (same length everywhere), concatenated in rank order.
    func allGather(_ send: UnsafeBufferPointer<Double>, into receive: UnsafeMutableBufferPointer<Double>)
    func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int)
    /// Sends `outgoing` to `partner` while receiving `incoming` from it (no deadlock).
    func exchange(_ outgoing: UnsafeBufferPointer<Float>, _ incoming: UnsafeMutableBufferPointer<Float>, with partner: Int)
    /// Ends every rank of the job with `code`, after printing `message` (once, from this rank).
    func abort(_ message: String, code: Int32) -> Never
    func finalize()
    /// Tells the communicator which step is running (for its timeout messages).
    func noteStep(_ step: Int)
    /// Collective: the ranks passing the same `color` form a new communicator, ranked in this
    /// one's order (a low-communication run's workers, and the peers across them).
    func split(color: Int) -> Communicator

    /// Registers the buckets that `startAllReduceSum` will sum (once, before the first step:
    /// requests and staging buffers are made here, not per step). Every rank registers the same.
    /// With `.bf16` the values travel between hosts as bfloat16 and are added in float32.
    /// `hierarchical`: sum within each host through shared memory first, so one copy per host
    /// crosses the network (ignored with one rank per host or one host). `what` names the sums
    /// in the message of a rank that waited too long for them.
    func prepareNonBlockingSums(_ buckets: [UnsafeMutableBufferPointer<Float>], compression: GradientCompression, hierarchical: Bool, what: String)
    /// Starts summing registered bucket `bucket` over ranks in place and returns at once; the
    /// communicator owns progress. Callable from any thread, one at a time, while no blocking
    /// collective runs; every rank must start the same buckets in the same order. Every rank
    /// ends with the same values.
    func startAllReduceSum(bucket: Int)
    /// Waits until every started sum has completed; returns the seconds from the first start
    /// to the last completion (how long the network was busy).
    func waitForAllReduces() -> Double

    /// Registers the buckets of a sharded reduction (once, before the first step; every rank
    /// registers the same). Rank r owns `counts[r]` elements of each bucket, the ranks' parts
    /// contiguous in rank order. With `.bf16` the gradients travel as bfloat16, added in float32.
    func prepareShardedBuckets(_ buckets: [ShardedBucket], compression: GradientCompression)
    /// Starts summing registered bucket `bucket`'s gradient over ranks; each rank receives only
    /// the sum of its own part, in place (the other parts are left as they were). Callable from any thread, one at a time, while no blocking collective runs;
    /// every rank starts the same buckets in the same order.
    func startReduceScatter(bucket: Int)
    /// Waits for every started reduce-scatter; returns the seconds the network was busy.
    func waitForReduceScatters() -> Double
    /// Starts gathering registered bucket `bucket`'s parameters: each rank's part, in place,
    /// to every rank. Same calling rules as `startReduceScatter`.
    func startAllGather(bucket: Int)
    /// Waits for registered bucket `bucket`'s all-gather, started this step, to complete; returns
    /// at once when it has been waited for already. Callable from any thread, one at a time.
    func waitForAllGather(bucket: Int)
    /// Rank r's `send` (`counts[r]` values) placed at its part of `receive` on `root`, the
    /// parts contiguous in rank order (blocking; `receive` is read on `root` only).
    func gather(_ send: UnsafeBufferPointer<Float>, into receive: UnsafeMutableBufferPointer<Float>, counts: [Int], root: Int)
    /// The inverse of `gather`: rank r receives its part of `root`'s `send` (blocking).
    func scatter(_ send: UnsafeBufferPointer<Float>, counts: [Int], into receive: UnsafeMutableBufferPointer<Float>, root: Int)
}

/// One bucket of a sharded reduction: the whole bucket of gradient and of parameters (the same
/// elements), and how many elements of it each rank owns.
public struct ShardedBucket {
    public let gradient: UnsafeMutableBufferPointer<Float>
    public let parameters: UnsafeMutableBufferPointer<Float>
    public let counts: [Int]
    /// Ranges of `parameters` (from its start, ascending) that travel as bfloat16, rounded to
    /// nearest even (goml_bfloat16.h), through the bucket's `gradient` memory, which is idle
    /// then; the rest as float32. The caller says which values may round.
    public let bf16Ranges: [Range<Int>]
    public init(gradient: UnsafeMutableBufferPointer<Float>, parameters: UnsafeMutableBufferPointer<Float>, counts: [Int],
                bf16Ranges: [Range<Int>] = []) {
        precondition(gradient.count == parameters.count && counts.reduce(0, +) == gradient.count)
        precondition(zip(bf16Ranges, bf16Ranges.dropFirst()).allSatisfy { $0.upperBound <= $1.lowerBound }
                     && bf16Ranges.allSatisfy { $0.lowerBound >= 0 && $0.upperBound <= parameters.count })
        self.gradient = gradient
        self.parameters = parameters
        self.counts = counts
        self.bf16Ranges = bf16Ranges
    }
}

/// How gradient buckets travel: float32 as computed, or bfloat16 (half the bytes).
public enum GradientCompression: String, Codable, Sendable, CaseIterable {
    case none, bf16
}

public extension Communicator {
    var isRoot: Bool { rank == 0 }

    /// True on every rank when `ok` holds on every rank (one collective).
    func allAgree(_ ok: Bool) -> Bool {
        var flag = [ok ? 0.0 : 1.0]
        flag.withUnsafeMutableBufferPointer { allReduceSum($0) }
        return flag[0] == 0
    }
}

/// One process, no MPI: every collective is the identity. For debugging under lldb/valgrind.
public final class SingleProcessCommunicator: Communicator {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public var localRank: Int { 0 }
    public var localSize: Int { 1 }
    public var hostName: String { "this process" }
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) {}
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) {}
    public func allGather(_ send: UnsafeBufferPointer<Double>, into receive: UnsafeMutableBufferPointer<Double>) {
        _ = receive.initialize(from: send)
    }
    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) {}
    public func exchange(_ outgoing: UnsafeBufferPointer<Float>, _ incoming: UnsafeMutableBufferPointer<Float>, with partner: Int) {
        preconditionFailure("a single process has no rank \(partner) to exchange with")
    }
    public func abort(_ message: String, code: Int32) -> Never {
        FileHandle.standardError.write(Data("goml-dist: error: \(message)\n".utf8))
        exit(code)
    }
    public func finalize() {}
    public func noteStep(_ step: Int) {}
    public func split(color: Int) -> Communicator { self }
    public func prepareNonBlockingSums(_ buckets: [UnsafeMutableBufferPointer<Float>], compression: GradientCompression, hierarchical: Bool, what: String) {}
    public func startAllReduceSum(bucket: Int) {}
    public func waitForAllReduces() -> Double { 0 }
    // One rank owns every bucket whole: its sum is its gradient, its gather its parameters.
    public func prepareShardedBuckets(_ buckets: [ShardedBucket], compression: GradientCompression) {}
    public func startReduceScatter(bucket: Int) {}
    public func waitForReduceScatters() -> Double { 0 }
    public func startAllGather(bucket: Int) {}
    public func waitForAllGather(bucket: Int) {}
    public func gather(_ send: UnsafeBufferPointer<Float>, into receive: UnsafeMutableBufferPointer<Float>, counts: [Int], root: Int) {
        _ = receive.update(fromContentsOf: send)
    }
    public func scatter(_ send: UnsafeBufferPointer<Float>, counts: [Int], into receive: UnsafeMutableBufferPointer<Float>, root: Int) {
        _ = receive.update(fromContentsOf: send)
    }
}

/// A 64-bit word as its two 32-bit halves, each exact in a Double, so that checksums,
/// fingerprints and generator states travel in the Double collectives.
public enum WordHalves {
    public static func split(_ word: UInt64) -> (high: Double, low: Double) { (Double(word >> 32), Double(word & 0xFFFF_FFFF)) }
    public static func join(_ high: Double, _ low: Double) -> UInt64 { UInt64(high) << 32 | UInt64(low) }
}
