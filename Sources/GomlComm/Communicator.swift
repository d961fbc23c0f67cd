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

    // Non-blocking collectives on fixed buffers, for GomlTrain's Reducer: made once, started
    // every step, tested until complete (the engine progresses only inside these calls). Start
    // and test from one thread at a time; every rank makes and starts the same requests in the
    // same order. In place throughout.

    /// Sums `count` elements at `buffer` over ranks; every rank ends with the sum.
    func makeAllReduceSum(_ buffer: UnsafeMutableRawPointer, count: Int, of element: WireElement) -> CollectiveRequest
    /// Sums `count` elements at `buffer` over ranks into `root`'s (the others' stay as they were).
    /// Not `persistent`: made anew at each start (the engine may keep a buffer while a request lives).
    func makeReduceSum(_ buffer: UnsafeMutableRawPointer, count: Int, of element: WireElement, root: Int, persistent: Bool) -> CollectiveRequest
    /// `root`'s `count` elements at `buffer` to every rank.
    func makeBroadcast(_ buffer: UnsafeMutableRawPointer, count: Int, of element: WireElement, root: Int) -> CollectiveRequest
    /// Rank r's `counts[r]` elements, which start at element `counts[..<r].sum()` of `buffer`, to every rank.
    func makeAllGather(_ buffer: UnsafeMutableRawPointer, counts: [Int], of element: WireElement) -> CollectiveRequest
    /// A communicator made with this one, so that getting it is no collective (reducers are
    /// built during set-up, where a rank that failed early must not leave the others waiting).
    /// nil where this rank is not among its ranks.
    func companion(_ kind: Companion) -> Communicator?
    /// Runs `wait` (for requests this rank started) under the collective timeout, which ends the
    /// job naming `what` when no rank makes progress.
    func whileWaiting(for what: String, _ wait: () -> Void)

    /// Memory every rank of this communicator reads and writes, when they all run on one host
    /// (MPI_Win_allocate_shared): rank r's `count` floats are `segments[r]`. nil when the ranks
    /// span hosts or the host could not map it on every rank. Collective.
    func sharedFloats(count: Int) -> SharedFloats?

    /// Rank r's `send` (`counts[r]` values) placed at its part of `receive` on `root`, the
    /// parts contiguous in rank order (blocking; `receive` is read on `root` only).
    func gather(_ send: UnsafeBufferPointer<Float>, into receive: UnsafeMutableBufferPointer<Float>, counts: [Int], root: Int)
    /// The inverse of `gather`: rank r receives its part of `root`'s `send` (blocking).
    func scatter(_ send: UnsafeBufferPointer<Float>, counts: [Int], into receive: UnsafeMutableBufferPointer<Float>, root: Int)
}

/// One non-blocking collective (see `Communicator.makeAllReduceSum` and the others).
public protocol CollectiveRequest: AnyObject {
    func start()
    /// True once the collective started last has completed on this rank.
    func test() -> Bool
}

/// Float32 memory shared by the ranks of one host (`Communicator.sharedFloats`): each rank's
/// segment, in rank order. Under MPI it lasts as long as the process: freeing a window is one
/// more collective that every rank would have to reach.
public final class SharedFloats: @unchecked Sendable {
    public let segments: [UnsafeMutableBufferPointer<Float>]
    private let barrier: (String) -> Void

    public init(segments: [UnsafeMutableBufferPointer<Float>], barrier: @escaping (String) -> Void) {
        self.segments = segments
        self.barrier = barrier
    }

    /// Returns once every rank has called it; what any rank wrote to the segments before it,
    /// every rank reads after it. Waits under the collective timeout, naming `what`.
    public func synchronize(_ what: String) { barrier(what) }
}

/// The communicators a job's communicator comes with (`Communicator.companion`).
public enum Companion: CaseIterable, Sendable {
    /// The same ranks, whose collectives need no common order with the original's.
    case apart
    /// This host's ranks, in the original's order; and those again, apart.
    case host, hostApart
    /// One rank per host, each host's first.
    case hostFirsts
}

/// What one element of a non-blocking collective is: a float32, or a bfloat16 (goml_bfloat16.h),
/// whose sums are added in float32 and rounded again.
public enum WireElement: Sendable {
    case float32, bfloat16
    public var bytes: Int { self == .float32 ? 4 : 2 }
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
    // One rank: every sum is its own values, every gather and broadcast its own.
    public func makeAllReduceSum(_ buffer: UnsafeMutableRawPointer, count: Int, of element: WireElement) -> CollectiveRequest { CompletedRequest() }
    public func makeReduceSum(_ buffer: UnsafeMutableRawPointer, count: Int, of element: WireElement, root: Int, persistent: Bool) -> CollectiveRequest { CompletedRequest() }
    public func makeBroadcast(_ buffer: UnsafeMutableRawPointer, count: Int, of element: WireElement, root: Int) -> CollectiveRequest { CompletedRequest() }
    public func makeAllGather(_ buffer: UnsafeMutableRawPointer, counts: [Int], of element: WireElement) -> CollectiveRequest { CompletedRequest() }
    public func companion(_ kind: Companion) -> Communicator? { self }
    public func whileWaiting(for what: String, _ wait: () -> Void) { wait() }
    public func sharedFloats(count: Int) -> SharedFloats? { nil }
    public func gather(_ send: UnsafeBufferPointer<Float>, into receive: UnsafeMutableBufferPointer<Float>, counts: [Int], root: Int) {
        _ = receive.update(fromContentsOf: send)
    }
    public func scatter(_ send: UnsafeBufferPointer<Float>, counts: [Int], into receive: UnsafeMutableBufferPointer<Float>, root: Int) {
        _ = receive.update(fromContentsOf: send)
    }
}

/// A collective with one rank: complete as soon as started.
private final class CompletedRequest: CollectiveRequest {
    func start() {}
    func test() -> Bool { true }
}

/// A 64-bit word as its two 32-bit halves, each exact in a Double, so that checksums,
/// fingerprints and generator states travel in the Double collectives.
public enum WordHalves {
    public static func split(_ word: UInt64) -> (high: Double, low: Double) { (Double(word >> 32), Double(word & 0xFFFF_FFFF)) }
    public static func join(_ high: Double, _ low: Double) -> UInt64 { UInt64(high) << 32 | UInt64(low) }
}
