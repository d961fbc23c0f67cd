// Communicator: the seam between training and the distributed engine. The trainer sees only
// this protocol; GomlMPI implements it over OpenMPI, SingleProcessCommunicator without MPI.

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
}
